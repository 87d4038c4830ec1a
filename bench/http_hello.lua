-- bench/http_hello.lua PORT - HTTP/1.1 keep-alive hello world on
-- 127.0.0.1 (workload A of ../shared/bench, beside node/http_hello.js):
-- tide.http with a Lua handler answering an 11-byte body.
local http = require "tide.http"

local port = tonumber(arg[1]) or 18084
assert(http.serve{host = "127.0.0.1", port = port, backlog = 4096,
                  keepalive_timeout = 600, headers_timeout = 601,
                  max_connections = 100000,
                  handler = function(req, res)
  return 200, "hello world", {["Content-Type"] = "text/plain"}
end})
