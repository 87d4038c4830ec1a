-- later.lua: "later <ms> <text>" answers after a delay. The hook waits on
-- a timer; the service goes on serving meanwhile.
local M = {}

function M.on_message(line)
  local ms, text = line:match("^later%s+(%d+)%s+(.*)$")
  if not ms then return nil end
  tide.sleep(tonumber(ms) / 1000)
  return text
end

return M
