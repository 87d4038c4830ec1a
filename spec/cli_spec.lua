-- spec/cli_spec.lua - the `tide` command line (API.md, "The command line"):
-- options, script arguments, standard input, exit statuses and error
-- messages. Each test runs the binary ($TIDE_BIN, or build/tide) as a child.

local S = require "spec.support"
local shell_quote, read_all, write_file = S.shell_quote, S.read_all, S.write_file
local TIDE = S.TIDE

local temps = {} -- files and folders to remove after each test

local function tmpfile(content)
  local path = os.tmpname()
  temps[#temps + 1] = path
  if content then write_file(path, content) end
  return path
end

local function tmpdir()
  local path = os.tmpname()
  os.remove(path)
  os.execute("mkdir " .. shell_quote(path))
  temps[#temps + 1] = path
  return path
end

-- Runs `tide <args>` (args: a list of words, quoted here) with `opts.stdin`
-- as standard input and `opts.dir` as working folder. Returns stdout,
-- stderr and the exit status.
local function tide_cmd(args, opts)
  opts = opts or {}
  local words = {}
  for i, a in ipairs(args) do words[i] = shell_quote(a) end
  local inf = opts.stdin and tmpfile(opts.stdin) or "/dev/null"
  local out, err, rc = S.run(("%s %s <%s"):format(shell_quote(TIDE),
    table.concat(words, " "), shell_quote(inf)), opts.dir)
  return out, err, rc
end

-- A script file with `code`; returns its path.
local function script(code, dir, name)
  if dir then
    local path = dir .. "/" .. (name or "main.lua")
    write_file(path, code)
    return path
  end
  return tmpfile(code)
end

local watchdog = S.watchdog("cli_spec.lua")

describe("the tide command", function()
  teardown(function() watchdog:stop() end)

  after_each(function()
    for i = #temps, 1, -1 do
      os.execute("rm -rf " .. shell_quote(temps[i]))
      temps[i] = nil
    end
  end)

  describe("-e", function()
    it("runs a chunk", function()
      local out, err, rc = tide_cmd {"-e", "io.write('hello ', 1 + 1)"}
      assert.equal(0, rc, err)
      assert.equal("hello 2", out)
    end)

    it("runs several chunks in order, sharing globals", function()
      local out, err, rc = tide_cmd {
        "-e", "x = 1; io.write('a', x)",
        "-e", "x = x + 1; io.write('b', x)",
        "-e", "io.write('c', x + 1)"}
      assert.equal(0, rc, err)
      assert.equal("a1b2c3", out)
    end)

    it("runs inside a task: the chunk may wait", function()
      local out, err, rc = tide_cmd {"-e", "tide.sleep(0.01) io.write('slept')"}
      assert.equal(0, rc, err)
      assert.equal("slept", out)
    end)

    it("reports a syntax error and exits with status 1", function()
      local out, err, rc = tide_cmd {"-e", "x = = 1", "-e", "print('ran')"}
      assert.equal(1, rc)
      assert.equal("", out)
      assert.truthy(err:find("unexpected symbol", 1, true), err)
    end)
  end)

  describe("-l", function()
    it("requires a module, in order with -e", function()
      local dir = tmpdir()
      write_file(dir .. "/cli_probe_mod.lua",
                 "probe_seen = seen_before\nreturn {}\n")
      local out, err, rc = tide_cmd({
        "-e", "seen_before = 'yes'",
        "-l", "cli_probe_mod",
        "-e", "io.write(tostring(probe_seen), ' ', "
              .. "tostring(package.loaded.cli_probe_mod ~= nil))"},
        {dir = dir})
      assert.equal(0, rc, err)
      assert.equal("yes true", out)
    end)

    it("loads Debian's lua-cjson", function()
      local out, err, rc = tide_cmd {
        "-l", "cjson", "-e", "io.write(require('cjson').encode({1, 2, 3}))"}
      assert.equal(0, rc, err)
      assert.equal("[1,2,3]", out)
    end)

    it("fails with status 1 for a module that does not exist", function()
      local _, err, rc = tide_cmd {"-l", "no_such_module_xyz"}
      assert.equal(1, rc)
      assert.truthy(err:find("no_such_module_xyz", 1, true), err)
    end)
  end)

  describe("a script", function()
    it("gets its arguments in arg and in ...", function()
      local path = script([[
        io.write(arg[0], "|", arg[1], "|", arg[2], "|", #arg, "|")
        io.write(select("#", ...), "|", table.concat({...}, ","))
      ]])
      local out, err, rc = tide_cmd {path, "one", "two words"}
      assert.equal(0, rc, err)
      assert.equal(path .. "|one|two words|2|2|one,two words", out)
    end)

    it("sees the interpreter and options at negative indices of arg", function()
      local path = script([[io.write(arg[-1], "|", arg[-2], "|", arg[-3])]])
      local out, err, rc = tide_cmd {"-e", "x=1", path, "a"}
      assert.equal(0, rc, err)
      assert.equal("x=1|-e|" .. TIDE, out)
    end)

    it("takes arguments that look like options after the script", function()
      local path = script([[io.write(table.concat({...}, " "))]])
      local out, err, rc = tide_cmd {path, "-e", "--threads", "-v"}
      assert.equal(0, rc, err)
      assert.equal("-e --threads -v", out)
    end)

    it("is read from standard input with '-'", function()
      local out, err, rc = tide_cmd({"-", "a", "b"}, {
        stdin = "io.write('stdin:', table.concat({...}, ','), ':', arg[0])"})
      assert.equal(0, rc, err)
      assert.equal("stdin:a,b:-", out)
    end)

    it("is read from standard input when none is named and it is no terminal", function()
      local out, err, rc = tide_cmd({}, {stdin = "io.write(6 * 7)"})
      assert.equal(0, rc, err)
      assert.equal("42", out)
    end)

    it("finds modules in its own folder", function()
      local dir = tmpdir()
      write_file(dir .. "/cli_neighbour.lua", "return {answer = 42}\n")
      local path = script([[io.write(require("cli_neighbour").answer)]], dir)
      -- run from another folder: only the script's folder can explain it
      local out, err, rc = tide_cmd({path}, {dir = "/"})
      assert.equal(0, rc, err)
      assert.equal("42", out)
    end)

    it("missing: names the file and exits with status 1", function()
      local path = tmpfile() .. "-missing.lua"
      local out, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.equal("", out)
      assert.truthy(err:find(path, 1, true), err)
    end)

    it("with a syntax error: prints file:line: and exits with status 1", function()
      local path = script("local a = 1\nlocal b = = 2\nprint('ran')\n")
      local out, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.equal("", out)
      assert.truthy(err:find(path .. ":2:", 1, true), err)
    end)

    it("with a runtime error: prints file:line: message and a traceback, status 1", function()
      local path = script("io.write('before ')\n\nerror('kaboom')\nio.write('after')\n")
      local out, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.equal("before ", out)
      assert.truthy(err:find(path .. ":3: kaboom", 1, true), err)
      assert.truthy(err:find("stack traceback", 1, true), err)
    end)

    it("with an error after a wait: still status 1 and a traceback", function()
      local path = script("tide.sleep(0.01)\nlocal t = nil\nreturn t.field\n")
      local _, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.truthy(err:find(path .. ":3:", 1, true), err)
      assert.truthy(err:find("stack traceback", 1, true), err)
    end)

    it("may start with a #! line", function()
      local path = script("#!/usr/bin/env tide\nio.write('shebang ok')\n")
      local out, err, rc = tide_cmd {path}
      assert.equal(0, rc, err)
      assert.equal("shebang ok", out)
    end)

    it("from standard input: errors name stdin and the line", function()
      local _, err, rc = tide_cmd({"-"}, {stdin = "local x = 1\nerror('from stdin')\n"})
      assert.equal(1, rc)
      assert.truthy(err:find("stdin:2: from stdin", 1, true), err)
    end)

    it("with an error object that is not a string: status 1, its tostring", function()
      local path = script([[
        error(setmetatable({}, {__tostring = function() return "custom error" end}))
      ]])
      local _, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.truthy(err:find("custom error", 1, true), err)
    end)

    it("with an error in the main task: exits at once, pending timers dropped", function()
      local path = script([[
        tide.after(2, function() io.write("timer fired") end)
        tide.sleep(0.01)
        error("main failed")
      ]])
      local t0 = tide.hrtime()
      local out, err, rc = tide_cmd {path}
      assert.equal(1, rc)
      assert.equal("", out)
      assert.truthy(err:find("main failed", 1, true), err)
      assert.is_true(tide.hrtime() - t0 < 1.5, "waited for the timer")
    end)

    it("ends with status 0 when it returns while timers are still due", function()
      local path = script([[
        tide.after(0.02, function() io.write("timer fired") end)
        return 7
      ]])
      local out, err, rc = tide_cmd {path}
      assert.equal(0, rc, err)
      assert.equal("timer fired", out)
    end)

    it("sees the core as the global tide", function()
      local path = script([[io.write(type(tide), " ", tostring(tide == require("tide")))]])
      local out, err, rc = tide_cmd {path}
      assert.equal(0, rc, err)
      assert.equal("table true", out)
    end)
  end)

  describe("tide.exit", function()
    it("exits with the given status", function()
      local out, err, rc = tide_cmd {"-e", "io.write('x') tide.exit(3) io.write('y')"}
      assert.equal(3, rc, err)
      assert.equal("x", out)
    end)

    it("from a task after a wait: status 0, nothing after it runs", function()
      local path = script([[
        tide.spawn(function()
          tide.sleep(0.01)
          tide.exit()
          io.write("task went on")
        end)
        tide.after(0.5, function() io.write("timer fired") end)
        tide.sleep(2)
        io.write("main went on")
      ]])
      local t0 = tide.hrtime()
      local out, err, rc = tide_cmd {path}
      assert.equal(0, rc, err)
      assert.equal("", out)
      assert.is_true(tide.hrtime() - t0 < 1.5, "waited for the main task's sleep")
    end)

    it("runs close callbacks before exiting", function()
      local out, err, rc = tide_cmd {"-e", [[
        local t = tide.after(10, function() end)
        t:close(function() io.write("closed") end)
        tide.exit(5)
      ]]}
      assert.equal(5, rc, err)
      assert.equal("closed", out)
    end)

    it("resumes no other task afterwards, even one a close callback wakes", function()
      local path = script([[
        local ch = tide.channel(1)
        tide.spawn(function()
          tide.sleep(0.01)
          local t = tide.after(10, function() end)
          t:close(function()
            io.write("close ran;")
            ch:send("wake up")
            tide.next(function() io.write("next ran;") end)
          end)
          tide.exit(4)
        end)
        ch:recv()
        io.write("main resumed;")
      ]])
      local out, err, rc = tide_cmd {path}
      assert.equal(4, rc, err)
      assert.equal("close ran;", out)
    end)

    it("rejects a bad status argument", function()
      local _, err, rc = tide_cmd {"-e", "tide.exit('x')"}
      assert.equal(1, rc)
      assert.truthy(err:find("bad argument #1 to 'exit'", 1, true), err)
    end)
  end)

  describe("options", function()
    it("-i reads lines as they come and runs them in a task, after -e", function()
      local out, err, rc = tide_cmd({"-e", "x = 20", "-i"}, {stdin =
        "print(x + 1)\n" ..
        "tide.sleep(0.01) print('woke in', tide.phase())\n" ..
        "for i = 1,\n2 do io.write(i, ';') end\n" ..
        "error('oops')\n" ..
        "print('still here')\n"})
      assert.equal(0, rc, err)
      assert.truthy(out:find("> 21\n", 1, true), out)
      assert.truthy(out:find("woke in\ttimers", 1, true), out)
      assert.truthy(out:find(">> 1;2;", 1, true), out)
      assert.truthy(err:find("oops", 1, true), err)
      assert.truthy(out:find("still here", 1, true), out)
    end)

    it("-i on a pipe waits for input without blocking the loop", function()
      -- the second line comes 0.2 s later; a timer keeps ticking meanwhile
      local out, err, rc = S.run("sh -c " .. shell_quote(("(echo 'n = 0; " ..
        "tide.every(0.02, function() n = n + 1 end)'; sleep 0.2; " ..
        "echo 'print(n >= 5)') | %s -i"):format(shell_quote(TIDE))))
      assert.equal(0, rc, err)
      assert.truthy(out:find("true", 1, true), out)
    end)

    it("-v prints the version and exits with status 0", function()
      local out, err, rc = tide_cmd {"-v"}
      assert.equal(0, rc, err)
      assert.truthy((out .. err):find("tide %d+%.%d+"), out .. err)
    end)

    it("--version does the same", function()
      local out, err, rc = tide_cmd {"--version"}
      assert.equal(0, rc, err)
      assert.truthy((out .. err):find("tide %d+%.%d+"), out .. err)
    end)

    it("-v with -e prints the version, then runs the chunk", function()
      local out, err, rc = tide_cmd {"-v", "-e", "io.write('ran')"}
      assert.equal(0, rc, err)
      assert.truthy(out:find("ran$"), out)
      assert.truthy((out .. err):find("tide %d+%.%d+"), out .. err)
    end)

    it("-h prints the usage and exits with status 0", function()
      local out, err, rc = tide_cmd {"-h"}
      assert.equal(0, rc, err)
      assert.truthy(out:find("usage", 1, true), out)
      assert.truthy(out:find("--threads", 1, true), out)
      local out2, _, rc2 = tide_cmd {"--help"}
      assert.equal(0, rc2)
      assert.equal(out, out2)
    end)

    it("--threads N is accepted", function()
      local out, err, rc = tide_cmd {"--threads", "2", "-e", "io.write('ok')"}
      assert.equal(0, rc, err)
      assert.equal("ok", out)
      out, err, rc = tide_cmd {"--threads=3", "-e", "io.write('ok')"}
      assert.equal(0, rc, err)
      assert.equal("ok", out)
    end)

    for _, bad in ipairs {"0", "x", "-1", "2x", ""} do
      it(("--threads %q is rejected"):format(bad), function()
        local out, err, rc = tide_cmd {"--threads", bad, "-e", "io.write('ran')"}
        assert.is_true(rc ~= 0 and rc ~= 124, "status " .. tostring(rc))
        assert.equal("", out)
        assert.truthy(err:find("threads", 1, true), err)
      end)
    end

    it("--threads without a value is rejected", function()
      local out, err, rc = tide_cmd {"--threads"}
      assert.is_true(rc ~= 0 and rc ~= 124, "status " .. tostring(rc))
      assert.equal("", out)
      assert.truthy(err:find("threads", 1, true), err)
    end)

    it("an unknown option fails with the usage", function()
      local out, err, rc = tide_cmd {"--no-such-option", "-e", "io.write('ran')"}
      assert.is_true(rc ~= 0 and rc ~= 124, "status " .. tostring(rc))
      assert.equal("", out)
      assert.truthy(err:find("--no-such-option", 1, true), err)
      assert.truthy(err:lower():find("usage", 1, true), err)
    end)

    it("-e without its chunk fails", function()
      local out, err, rc = tide_cmd {"-e"}
      assert.is_true(rc ~= 0 and rc ~= 124, "status " .. tostring(rc))
      assert.equal("", out)
      assert.truthy(err:find("-e", 1, true), err)
    end)

    -- regression: started with 0 and 1 closed, the descriptors tide
    -- opens first (an eventfd, a socket) took those numbers, and output
    -- went into them
    it("holds closed standard descriptors with /dev/null", function()
      local path = script([[
        local pid = require("tide.process").pid
        local net = require "tide.net"
        local sv = assert(net.listen{host = "127.0.0.1", port = 0})
        print("to stdout")
        local p = io.popen("readlink /proc/" .. pid .. "/fd/0 /proc/" .. pid .. "/fd/1")
        local links = p:read("*a")
        p:close()
        sv:close()
        local f = assert(io.open(os.getenv("OUT"), "w"))
        f:write(links)
        f:close()
      ]])
      local outf = tmpfile()
      local _, _, rc = S.run(("env OUT=%s %s %s <&- 1>&-"):format(
        shell_quote(outf), shell_quote(TIDE), shell_quote(path)))
      assert.equal(0, rc)
      assert.equal("/dev/null\n/dev/null\n", read_all(outf))
    end)

    it("-- ends the options", function()
      local path = script([[io.write(table.concat({...}, " "))]])
      local out, err, rc = tide_cmd {"--", path, "-v"}
      assert.equal(0, rc, err)
      assert.equal("-v", out)
    end)
  end)

  describe("inside a spec", function()
    it("lets the test body wait: this file runs inside tide", function()
      local t0 = tide.hrtime()
      tide.sleep(0.02)
      local slept = tide.hrtime() - t0
      assert.is_true(slept >= 0.019, "slept " .. slept)
      assert.is_not_nil(tide.current())
    end)

    it("can load lua-cjson in the running host", function()
      local cjson = require "cjson"
      assert.same({a = {1, 2}}, cjson.decode('{"a":[1,2]}'))
      assert.equal('{"k":"v"}', cjson.encode({k = "v"}))
    end)
  end)
end)
