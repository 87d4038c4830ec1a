-- stats.lua: counts the messages it sees; "stats" answers with the counts
-- as JSON. The counts survive a reload: they live in M.state, and the new
-- version's migrate takes them over.
local M = { state = { seen = 0, started = os.time() } }

function M.migrate(old)
  if type(old) == "table" and type(old.seen) == "number" then
    M.state.seen = old.seen
    M.state.started = old.started
  end
end

function M.on_message(line)
  M.state.seen = M.state.seen + 1
  if line ~= "stats" then return nil end
  return json.encode({
    seen = M.state.seen,
    handled = service.messages(),
    clients = service.clients(),
  })
end

return M
