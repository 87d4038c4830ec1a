-- examples/hello.lua - a small HTTP service on tide.http: a few
-- routes answering plain text, JSON, a streamed response and an echo of
-- the request body.
--
--   build/tide examples/hello.lua [port]       (default 8080)
--   curl http://127.0.0.1:8080/
--   curl http://127.0.0.1:8080/json?name=tide
--   curl -N http://127.0.0.1:8080/stream            (five lines, 0.2 s apart)
--   curl --data-binary @somefile http://127.0.0.1:8080/echo
--
-- Stop it with ^C or SIGTERM: it stops accepting, lets the requests in
-- flight finish (up to 10 s; /stream takes one) and exits with status 0.
local http = require "tide.http"
local json = require "tide.json"
local signal = require "tide.signal"

local port = tonumber(arg[1]) or 8080
local started = tide.time()
local served = 0

local routes = {}

routes["/"] = function()
  return 200, "hello from tide\n", {["Content-Type"] = "text/plain; charset=utf-8"}
end

routes["/json"] = function(req)
  local body = assert(json.encode({
    hello = req.query.name or "world",
    served = served,
    uptime = tide.time() - started,
    method = req.method,
    user_agent = req.headers["user-agent"],
  }))
  return 200, body .. "\n", {["Content-Type"] = "application/json"}
end

-- a chunked response, written as it is produced
routes["/stream"] = function(_, res)
  res:set_header("Content-Type", "text/plain")
  for i = 1, 5 do
    if not res:write(("line %d of 5\n"):format(i)) then return end -- client left
    tide.sleep(0.2)
  end
  res:finish()
end

-- the request body streamed back as it comes (at most 1 MiB, the default)
routes["/echo"] = function(req, res)
  if req.method ~= "POST" and req.method ~= "PUT" then
    return 405, "POST or PUT a body here\n", {Allow = "POST, PUT"}
  end
  res:set_header("Content-Type", req.headers["content-type"] or "application/octet-stream")
  while true do
    local chunk, err = req:read()
    if not chunk then
      if err then error("reading the body: " .. err) end
      break
    end
    res:write(chunk)
  end
  res:finish()
end

-- graceful shutdown (docs/signal.md): g:add closes the server when a
-- SIGTERM or SIGINT comes, g:track counts each request as work in flight
local shutdown = signal.graceful{grace = 10, on_shutdown = function(name)
  io.stderr:write(name, ": finishing the requests in flight\n")
end}

local server = shutdown:add(assert(http.serve{
  host = "127.0.0.1",
  port = port,
  handler = shutdown:track(function(req, res)
    served = served + 1
    local route = routes[req.path]
    if not route then return 404, "no route for " .. req.path .. "\n" end
    return route(req, res)
  end),
}))

print(("tide.http serving on http://%s:%d/ (routes: /, /json, /stream, /echo)")
  :format(server.host, server.port))
io.stdout:flush()
