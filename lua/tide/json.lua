-- tide.json: JSON on Debian's lua-cjson.
--
-- A private cjson instance (cjson.new), so a script that tunes the global
-- `require "cjson"` does not change tide's behaviour and the other way round.
-- Failures are values, not errors: encode and decode return nil, message,
-- the message as cjson words it (it names the position in the text).
local ok, cjson = pcall(require, "cjson")
if not ok then
  error("tide.json needs lua-cjson (Debian package lua-cjson): " .. tostring(cjson), 0)
end

local cj = cjson.new()
-- Sparse arrays ({[1]=a, [1000]=b}) become objects instead of an error.
cj.encode_sparse_array(true)
-- NaN and infinities are not JSON: refuse them (nil, message).
cj.encode_invalid_numbers(false)
cj.decode_invalid_numbers(false)
cj.encode_max_depth(1000)
cj.decode_max_depth(1000)

local encode, decode = cj.encode, cj.decode
local pcall, type, error = pcall, type, error

local json = {null = cj.null}

-- Strips cjson's own name from its messages ("Cannot serialise ...").
local function failure(msg)
  msg = tostring(msg):gsub("^[^:]*cjson[^:]*:%d+: ", "")
  return nil, msg
end

function json.encode(value)
  local ok, s = pcall(encode, value)
  if ok then return s end
  return failure(s)
end

function json.decode(s)
  if type(s) ~= "string" then
    error(("bad argument #1 to 'decode' (string expected, got %s)"):format(type(s)), 2)
  end
  local ok, v = pcall(decode, s)
  if ok then return v end
  return failure(v)
end

return json
