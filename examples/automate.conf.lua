-- examples/automate.conf.lua - the configuration of examples/automate.lua.
-- A Lua file returning a table (a .json file with the same shape works
-- too). Edit it and send SIGHUP to the running script to apply it.
return {
  -- Each job's result (name, exit code, output, duration) is POSTed here as
  -- JSON when set, e.g. "http://127.0.0.1:8080/results".
  report_url = nil,

  -- Commands run at an interval (seconds). A job still running when its
  -- next beat comes is not started twice: that beat is skipped and logged.
  jobs = {
    {name = "disk", every = 60, run = {"df", "-h", "/"}},
    {name = "load", every = 15, run = {"cat", "/proc/loadavg"}},
  },

  -- Commands run when a file in a folder changes. Changes closer together
  -- than `debounce` seconds start one run; the run sees the changed names
  -- in the environment variable CHANGED (space separated).
  watches = {
    {name = "inbox", path = "/tmp", run = {"sh", "-c", "echo changed: $CHANGED"},
     debounce = 0.5},
  },

  -- Seconds SIGTERM waits for running jobs before it exits anyway.
  grace = 10,
}
