-- spec/json_spec.lua - tide.json (API.md, "Other modules"): encode and
-- decode on lua-cjson, null, and failures as nil, message.

local json = require "tide.json"

describe("tide.json", function()
  it("round-trips nested values", function()
    local v = {name = "tide", list = {1, 2.5, "three", true, false},
               nested = {deeper = {x = -7}}}
    local back = json.decode(json.encode(v))
    assert.same(v, back)
  end)

  it("encodes arrays as arrays and maps as objects", function()
    assert.equal("[1,2,3]", json.encode({1, 2, 3}))
    assert.equal('{"a":1}', json.encode({a = 1}))
    assert.equal('"a\\"b\\\\c\\n"', json.encode('a"b\\c\n'))
  end)

  it("has a null that survives a round trip", function()
    local v = json.decode('{"a":null,"b":[null,1]}')
    assert.equal(json.null, v.a)
    assert.equal(json.null, v.b[1])
    assert.equal('{"a":null}', json.encode({a = json.null}))
    assert.equal("null", json.encode(json.null))
  end)

  it("decodes scalars and unicode escapes", function()
    assert.equal(12.5, json.decode("12.5"))
    assert.equal("é€", json.decode('"\\u00e9\\u20ac"'))
    assert.is_true(json.decode("true"))
  end)

  it("returns nil and a message for malformed text", function()
    for _, text in ipairs{"{", "", "[1,]", "{'a':1}", "1 2", "nul", '"\\x"'} do
      local v, err = json.decode(text)
      assert.is_nil(v, text)
      assert.is_string(err, text)
      assert.truthy(#err > 0)
    end
    local _, err = json.decode("[1, }")
    assert.matches("character 5", err)
  end)

  it("refuses NaN, infinities and functions with a message, not an error", function()
    for _, bad in ipairs{0/0, 1/0, -1/0, print, coroutine.create(print)} do
      local s, err = json.encode(bad)
      assert.is_nil(s)
      assert.is_string(err)
    end
    local s, err = json.encode({ok = 1, f = print})
    assert.is_nil(s)
    assert.matches("function", err)
  end)

  it("refuses cycles with a message", function()
    local t = {}
    t.self = t
    local s, err = json.encode(t)
    assert.is_nil(s)
    assert.matches("nesting", err)
  end)

  it("encodes sparse arrays as objects", function()
    local back = json.decode(json.encode({[1] = "a", [1000] = "b"}))
    assert.equal("a", back["1"])
    assert.equal("b", back["1000"])
  end)

  it("raises, naming the argument, when decode is given a non-string", function()
    assert.has_error(function() json.decode(42) end,
                     "bad argument #1 to 'decode' (string expected, got number)")
    assert.has_error(function() json.decode(nil) end)
  end)

  it("does not share settings with the global cjson module", function()
    local cjson = require "cjson"
    local before = cjson.encode_sparse_array()
    assert.is_false(before) -- cjson's own default is unchanged
    assert.is_false((pcall(cjson.encode, {[1] = 1, [1000] = 2})))
    assert.truthy(json.encode({[1] = 1, [1000] = 2}))
  end)
end)
