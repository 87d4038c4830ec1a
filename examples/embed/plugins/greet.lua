-- greet.lua: answers "hello" (and "hello <name>").
local M = {}

function M.on_message(line, client)
  local name = line:match("^hello%s*(.*)$")
  if not name then return nil end
  if name == "" then name = client end
  return "hello, " .. name .. "!"
end

return M
