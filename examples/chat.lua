-- examples/chat.lua - a line-based chat server: every client's line goes
-- to every other client. Each connection has two tasks: its handler reads
-- the client's lines, and a writer sends what others said, from a channel,
-- so a client that stops reading only ever delays itself (its channel
-- fills up, and then its messages are dropped, not buffered without end).
--
--   build/tide examples/chat.lua [port]        (default 7001)
--   nc 127.0.0.1 7001                           (first line: your name)
local net = require "tide.net"

local port = tonumber(arg[1]) or 7001
local MAX_QUEUED = 100 -- messages waiting for one slow client
local clients = {}     -- conn -> {name=, outbox=channel}

local function broadcast(from, text)
  for conn, c in pairs(clients) do
    if conn ~= from then
      -- a full outbox means that client stopped reading: drop, don't wait
      if c.outbox:count() < MAX_QUEUED then c.outbox:send(text, 0) end
    end
  end
end

local server = assert(net.listen{
  host = "127.0.0.1",
  port = port,
  handler = function(conn)
    conn:set_timeout(600)
    conn:write("name? ")
    local name = conn:read_line()
    if not name or name == "" then return end
    local c = {name = name, outbox = tide.channel(MAX_QUEUED)}
    clients[conn] = c
    local writer = tide.spawn(function()
      while true do
        local text = c.outbox:recv()
        if not text or not conn:write(text) then return end
      end
    end)
    broadcast(conn, ("* %s joined\n"):format(name))
    while true do
      local line = conn:read_line()
      if not line then break end
      if line ~= "" then broadcast(conn, ("<%s> %s\n"):format(name, line)) end
    end
    clients[conn] = nil
    c.outbox:close()
    writer:join(1)
    broadcast(conn, ("* %s left\n"):format(name))
  end,
})

print(("chat server on %s:%d"):format(server.host, server.port))
