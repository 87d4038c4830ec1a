-- examples/graceful.lua - a TCP service that shuts down gracefully: on
-- SIGTERM (or ^C) it stops accepting, lets the requests in flight finish
-- for up to 10 seconds, and exits with status 0; a second signal ends it
-- at once.
--
--   build/tide examples/graceful.lua [port]     (default 7001)
--   nc 127.0.0.1 7001                            (type a line: the answer
--                                                 comes after 2 seconds)
--   kill -TERM <pid>                             (while a request waits)
--
-- Each request is a line; the answer is the line upper-cased, after some
-- "work" (tide.sleep stands for a database call or a computation).
local net = require "tide.net"
local signal = require "tide.signal"
local process = require "tide.process"

local port = tonumber(arg[1]) or 7001

local shutdown = signal.graceful{
  grace = 10, -- seconds the requests in flight get to finish
  on_shutdown = function(name)
    io.stderr:write(("%s: stopping; waiting for the requests in flight\n")
      :format(name))
  end,
}

-- g:track marks each handler task as work in flight; g:add closes the
-- server (stops accepting) when the shutdown begins
local server = shutdown:add(assert(net.listen{
  host = "127.0.0.1",
  port = port,
  handler = shutdown:track(function(conn)
    conn:set_timeout(60)
    while true do
      local line = conn:read_line()
      if not line then return end
      io.stderr:write(("request from port %d: %s\n"):format(conn.remote_port, line))
      tide.sleep(2) -- the work
      conn:write(line:upper(), "\n")
      if shutdown.stopping then return end -- no new request after this one
    end
  end),
}))

io.stderr:write(("graceful: pid %d, listening on %s:%d\n"):format(
  process.pid, server.host, server.port))
