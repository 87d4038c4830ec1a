-- spec/fs_spec.lua - tide.fs (API.md, "Files"; docs/fs.md): every call,
-- its error paths (ENOENT, EACCES, EISDIR, ENOTDIR, EEXIST), file handles
-- (including one closed while a task waits on it), large and concurrent
-- reads, watchers, and misuse.
--
-- Everything happens in one temporary folder made with fs.mkdtemp and
-- removed at the end. The test bodies run inside tide's main task, so they
-- may wait; they synchronise on results and events, and where they wait
-- for something the loop does later (a descriptor closed on the pool, an
-- inotify event) they wait for it with a deadline.

local S = require "spec.support"
local fs = require "tide.fs"

local function pack(...) return {n = select("#", ...), ...} end

-- The error raised by fn(...), as a string (fails when it raises none).
local function error_of(fn, ...)
  local ok, e = pcall(fn, ...)
  assert(not ok, "expected an error")
  return tostring(e)
end

-- Asserts that r (packed results) is nil, message, code with the code and
-- a message that names every given path.
local function assert_fail(code, r, ...)
  assert.is_nil(r[1], "expected a failure, got " .. tostring(r[1]))
  assert.equal(code, r[3], tostring(r[2]))
  assert.is_truthy(r[2]:find(code .. ": ", 1, true), r[2])
  for i = 1, select("#", ...) do
    local p = select(i, ...)
    assert.is_truthy(r[2]:find(p, 1, true), r[2] .. " should name " .. p)
  end
end

-- Waits (with sleeps, up to `timeout` seconds) until pred() is true.
local function eventually(pred, timeout)
  local deadline = tide.hrtime() + (timeout or 5)
  while not pred() do
    if tide.hrtime() > deadline then return false end
    tide.sleep(0.005)
  end
  return true
end

local function open_fds() return #assert(fs.readdir("/proc/self/fd")) end

-- The bytes 0..255 in an order that depends on seed, n bytes of them.
local function bytes(n, seed)
  local t, x = {}, seed or 1
  for i = 1, 4096 do
    x = (x * 1103515245 + 12345) % 2147483648
    t[i] = string.char(math.floor(x / 65536) % 256)
  end
  local block, parts = table.concat(t), {}
  for i = 1, math.ceil(n / 4096) do
    parts[i] = ("%08x"):format(i) .. block:sub(9)
  end
  return table.concat(parts):sub(1, n)
end

local watchdog = S.watchdog("fs_spec.lua")
local root -- the temporary folder of this run
local serial = 0

-- a new path in root (nothing is created)
local function tmp(name)
  serial = serial + 1
  return ("%s/%d-%s"):format(root, serial, name or "f")
end

-- a Unix socket bound to path (the FFI: no tool needed), closed at once:
-- its file stays
local ffi = require "ffi"
ffi.cdef [[
typedef struct { unsigned short family; char path[108]; } fs_spec_sockaddr_un;
int socket(int domain, int type, int protocol);
int bind(int fd, const fs_spec_sockaddr_un *addr, unsigned int len);
int close(int fd);
]]
local function bind_unix_socket(path)
  local fd = ffi.C.socket(1, 1, 0) -- AF_UNIX, SOCK_STREAM
  assert(fd >= 0, "socket failed")
  local addr = ffi.new("fs_spec_sockaddr_un")
  addr.family = 1
  ffi.copy(addr.path, path)
  local rc = ffi.C.bind(fd, addr, ffi.sizeof(addr))
  ffi.C.close(fd)
  assert(rc == 0, "bind failed")
end

local function mkfifo(path)
  assert(os.execute("mkfifo " .. S.shell_quote(path)) == 0)
end

-- Puts a byte into a FIFO, to end a read(2) blocked on it. The shell opens
-- it read-write, which never blocks, whoever else has it open.
local function poke_fifo(path)
  assert(os.execute("printf x 1<>" .. S.shell_quote(path)) == 0)
end

describe("tide.fs", function()
  setup(function() root = assert(fs.mkdtemp()) end)

  teardown(function()
    if root then assert(fs.remove(root, {recursive = true})) end
    watchdog:stop()
  end)

  describe("read_file and write_file", function()
    it("round-trip binary data with every byte value, NULs included", function()
      local p, data = tmp(), bytes(100000, 7) .. "\0\0end\0"
      assert.is_true(fs.write_file(p, data))
      local got = fs.read_file(p)
      assert.equal(#data, #got)
      assert.is_true(got == data)
    end)

    it("read an empty file as the empty string", function()
      local p = tmp()
      assert.is_true(fs.write_file(p, ""))
      assert.equal("", fs.read_file(p))
    end)

    it("round-trip a 50 MiB file", function()
      local p, data = tmp(), bytes(50 * 1024 * 1024, 3)
      assert.is_true(fs.write_file(p, data))
      assert.equal(#data, fs.stat(p).size)
      local got = fs.read_file(p)
      assert.equal(#data, #got)
      assert.is_true(got == data, "the 50 MiB file came back different")
    end)

    it("serve 1,000 concurrent read_file calls, all correct", function()
      local files = {}
      for i = 1, 50 do
        files[i] = {path = tmp("c" .. i), data = bytes(1000 + i * 97, i)}
        assert(fs.write_file(files[i].path, files[i].data))
      end
      local tasks = {}
      for i = 1, 1000 do
        local f = files[i % 50 + 1]
        tasks[i] = tide.spawn(function()
          local s, err = fs.read_file(f.path)
          return s == f.data, err
        end)
      end
      tide.yield() -- every task has its job in the pool now
      local pool = tide.stats().pool
      assert.is_true(pool.queued + pool.running > 0)
      for i = 1, 1000 do
        local r = pack(tasks[i]:join(10))
        assert.is_true(r[1], tostring(r[2]))
        assert.is_true(r[2], "read " .. i .. " was wrong: " .. tostring(r[3]))
      end
    end)

    it("replace the contents, append with append=true", function()
      local p = tmp()
      assert.is_true(fs.write_file(p, "first version"))
      assert.is_true(fs.write_file(p, "second"))
      assert.equal("second", fs.read_file(p))
      assert.is_true(fs.write_file(p, "+more", {append = true}))
      assert.equal("second+more", fs.read_file(p))
    end)

    it("create the file with the given mode", function()
      local p = tmp()
      assert.is_true(fs.write_file(p, "x", {mode = "600"}))
      assert.equal(384, fs.stat(p).mode) -- 0600
      local q = tmp()
      assert.is_true(fs.write_file(q, "x", {mode = 256})) -- 0400
      assert.equal(256, fs.stat(q).mode)
    end)

    it("write atomically: new contents, no temporary file left", function()
      local dir = tmp("atomic")
      assert(fs.mkdir(dir))
      local p = dir .. "/config"
      assert.is_true(fs.write_file(p, "old"))
      assert.is_true(fs.write_file(p, "new contents", {atomic = true, mode = "640"}))
      assert.equal("new contents", fs.read_file(p))
      assert.equal(416, fs.stat(p).mode) -- 0640
      assert.same({"config"}, fs.readdir(dir))
      assert.is_true(fs.write_file(dir .. "/fresh", "x", {atomic = true}))
      assert.same({"config", "fresh"}, fs.readdir(dir))
    end)

    it("leave the target and the folder as they were when an atomic write fails", function()
      local dir = tmp("atomic2")
      assert(fs.mkdir(dir .. "/target", {recursive = true}))
      assert(fs.write_file(dir .. "/target/inside", "keep"))
      -- a file cannot be renamed over a non-empty folder
      local r = pack(fs.write_file(dir .. "/target", "x", {atomic = true}))
      assert.is_nil(r[1])
      assert.is_truthy(r[3] == "EISDIR" or r[3] == "ENOTEMPTY" or r[3] == "EEXIST", r[2])
      assert.same({"target"}, fs.readdir(dir))
      assert.equal("keep", fs.read_file(dir .. "/target/inside"))
      assert_fail("ENOENT", pack(fs.write_file(tmp("no") .. "/f", "x", {atomic = true})), "/f")
    end)

    it("refuse a file larger than max, before reading it", function()
      local p = tmp()
      assert(fs.write_file(p, ("x"):rep(1000)))
      assert.equal(1000, #fs.read_file(p, {max = 1000}))
      local r = pack(fs.read_file(p, {max = 999}))
      assert_fail("EFBIG", r, p)
      assert.is_truthy(r[2]:find("999", 1, true), r[2])
    end)

    it("refuse a sparse file over the default max of 1 GiB", function()
      local p = tmp()
      local f = assert(fs.open(p, "w"))
      assert.equal(2^30, f:seek("set", 2^30))
      assert.is_true(f:write("x"))
      assert.is_true(f:close())
      assert.equal(2^30 + 1, fs.stat(p).size)
      assert_fail("EFBIG", pack(fs.read_file(p)), p)
    end)

    it("bound an endless special file: /dev/zero with a max, and with the default", function()
      assert_fail("EFBIG", pack(fs.read_file("/dev/zero", {max = 100000})), "/dev/zero")
      assert_fail("EFBIG", pack(fs.read_file("/dev/zero")), "/dev/zero")
      assert.equal("", fs.read_file("/dev/null"))
    end)

    it("read a file of unknown size (a /proc file)", function()
      local s = assert(fs.read_file("/proc/self/status"))
      assert.is_truthy(s:find("Pid:", 1, true))
    end)

    it("fail with ENOENT, EISDIR and ENOTDIR naming the path", function()
      local missing, file = tmp("missing"), tmp()
      assert(fs.write_file(file, "x"))
      assert_fail("ENOENT", pack(fs.read_file(missing)), missing)
      assert_fail("EISDIR", pack(fs.read_file(root)), root)
      assert_fail("ENOTDIR", pack(fs.read_file(file .. "/x")), file .. "/x")
      assert_fail("ENOENT", pack(fs.write_file(missing .. "/x", "x")), missing .. "/x")
      assert_fail("EISDIR", pack(fs.write_file(root, "x")), root)
      assert_fail("ENOTDIR", pack(fs.write_file(file .. "/x", "x")), file .. "/x")
    end)
  end)

  describe("stat and lstat", function()
    it("describe a file with every field", function()
      local p = tmp()
      local before = tide.time()
      assert(fs.write_file(p, "12345", {mode = "644"}))
      local st = assert(fs.stat(p))
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.equal(420, st.mode) -- 0644
      for _, k in ipairs {"mtime", "atime", "ctime"} do
        assert.is_true(math.abs(st[k] - before) < 60, k)
      end
      assert.equal(1, st.nlink)
      for _, k in ipairs {"ino", "dev", "uid", "gid"} do
        assert.equal("number", type(st[k]), k)
      end
      assert.is_true(st.ino > 0)
    end)

    it("name every kind of file", function()
      local link, fifo = tmp("link"), tmp("fifo")
      assert(fs.symlink(root, link))
      mkfifo(fifo)
      assert.equal("directory", fs.stat(root).type)
      assert.equal("directory", fs.stat(link).type) -- followed
      assert.equal("link", fs.lstat(link).type)
      assert.equal("fifo", fs.stat(fifo).type)
      assert.equal("char", fs.stat("/dev/null").type)
      local sock = tmp("sock")
      bind_unix_socket(sock)
      assert.equal("socket", fs.stat(sock).type)
    end)

    it("fail with ENOENT and ENOTDIR", function()
      local missing, file = tmp("missing"), tmp()
      assert(fs.write_file(file, "x"))
      assert_fail("ENOENT", pack(fs.stat(missing)), missing)
      assert_fail("ENOENT", pack(fs.lstat(missing)), missing)
      assert_fail("ENOTDIR", pack(fs.stat(file .. "/x")), file .. "/x")
      assert_fail("ENOTDIR", pack(fs.lstat(file .. "/x")), file .. "/x")
    end)
  end)

  describe("exists", function()
    it("is true for what is there and false, never an error, otherwise", function()
      local file = tmp()
      assert(fs.write_file(file, ""))
      assert.is_true(fs.exists(file))
      assert.is_true(fs.exists(root))
      assert.is_false(fs.exists(tmp("missing")))
      assert.is_false(fs.exists(file .. "/under-a-file"))
      local dangling = tmp("dangling")
      assert(fs.symlink(tmp("nothing"), dangling))
      assert.is_false(fs.exists(dangling)) -- it follows links
    end)
  end)

  describe("readdir", function()
    it("lists the names in byte order, without . and ..", function()
      local dir = tmp("dir")
      assert(fs.mkdir(dir))
      assert.same({}, fs.readdir(dir))
      for _, n in ipairs {"b", "a", "C", "_x", ".hidden", "a1"} do
        assert(fs.write_file(dir .. "/" .. n, ""))
      end
      assert(fs.mkdir(dir .. "/sub"))
      assert.same({".hidden", "C", "_x", "a", "a1", "b", "sub"}, fs.readdir(dir))
    end)

    it("fails with ENOENT and ENOTDIR", function()
      local missing, file = tmp("missing"), tmp()
      assert(fs.write_file(file, "x"))
      assert_fail("ENOENT", pack(fs.readdir(missing)), missing)
      assert_fail("ENOTDIR", pack(fs.readdir(file)), file)
    end)
  end)

  describe("mkdir", function()
    it("creates a folder with a mode; EEXIST when it is there", function()
      local dir = tmp("dir")
      assert.is_true(fs.mkdir(dir, {mode = "700"}))
      assert.equal("directory", fs.stat(dir).type)
      assert.equal(448, fs.stat(dir).mode)
      assert_fail("EEXIST", pack(fs.mkdir(dir)), dir)
    end)

    it("creates the parents with recursive=true, and accepts an existing folder", function()
      local dir = tmp("deep")
      local leaf = dir .. "/a/b/c"
      assert_fail("ENOENT", pack(fs.mkdir(leaf)), leaf)
      assert.is_true(fs.mkdir(leaf, {recursive = true}))
      assert.equal("directory", fs.stat(leaf).type)
      assert.is_true(fs.mkdir(leaf, {recursive = true}))
      assert.is_true(fs.mkdir(dir .. "//a/b/d/", {recursive = true}))
      assert.same({"c", "d"}, fs.readdir(dir .. "/a/b"))
    end)

    it("fails under a file with ENOTDIR, and over a file with EEXIST", function()
      local file = tmp()
      assert(fs.write_file(file, "x"))
      assert_fail("ENOTDIR", pack(fs.mkdir(file .. "/x")), file .. "/x")
      assert_fail("ENOTDIR", pack(fs.mkdir(file .. "/x/y", {recursive = true})))
      assert_fail("EEXIST", pack(fs.mkdir(file, {recursive = true})), file)
    end)
  end)

  describe("remove", function()
    it("removes a file, a link and an empty folder", function()
      local file, dir, link = tmp(), tmp("dir"), tmp("link")
      assert(fs.write_file(file, "x"))
      assert(fs.mkdir(dir))
      assert(fs.symlink(dir, link))
      assert.is_true(fs.remove(link))
      assert.is_true(fs.exists(dir)) -- the link went, not its target
      assert.is_true(fs.remove(file))
      assert.is_true(fs.remove(dir))
      assert.is_false(fs.exists(file))
      assert.is_false(fs.exists(dir))
    end)

    it("fails with ENOTEMPTY on a full folder, ENOENT on a missing path", function()
      local dir = tmp("dir")
      assert(fs.mkdir(dir))
      assert(fs.write_file(dir .. "/f", ""))
      assert_fail("ENOTEMPTY", pack(fs.remove(dir)), dir)
      assert_fail("ENOENT", pack(fs.remove(tmp("missing"))), "missing")
      assert_fail("ENOENT", pack(fs.remove(tmp("missing"), {recursive = true})), "missing")
      local file = tmp()
      assert(fs.write_file(file, ""))
      assert_fail("ENOTDIR", pack(fs.remove(file .. "/x")), file .. "/x")
    end)

    it("removes a tree with recursive=true, without following links", function()
      local outside, tree = tmp("outside"), tmp("tree")
      assert(fs.mkdir(outside))
      assert(fs.write_file(outside .. "/precious", "keep me"))
      assert(fs.mkdir(tree .. "/a/b/c", {recursive = true}))
      for i = 1, 20 do assert(fs.write_file(tree .. "/a/f" .. i, "x")) end
      assert(fs.write_file(tree .. "/a/b/c/deep", "x"))
      assert(fs.symlink(outside, tree .. "/a/link-to-outside"))
      assert(fs.symlink(outside .. "/precious", tree .. "/a/b/link-to-file"))
      assert.is_true(fs.remove(tree, {recursive = true}))
      assert.is_false(fs.exists(tree))
      assert.equal("keep me", fs.read_file(outside .. "/precious"))
      -- a link given as the path itself is removed, not followed
      local link = tmp("link")
      assert(fs.symlink(outside, link))
      assert.is_true(fs.remove(link, {recursive = true}))
      assert.is_true(fs.exists(outside .. "/precious"))
      -- and a plain file with recursive=true
      assert.is_true(fs.remove(outside .. "/precious", {recursive = true}))
    end)

    it("refuses to remove / recursively", function()
      assert.matches("refusing to remove /", error_of(fs.remove, "/", {recursive = true}))
      assert.matches("refusing to remove /", error_of(fs.remove, "//", {recursive = true}))
    end)
  end)

  describe("rename", function()
    it("moves a file, replacing the target", function()
      local a, b = tmp("a"), tmp("b")
      assert(fs.write_file(a, "A"))
      assert(fs.write_file(b, "B"))
      assert.is_true(fs.rename(a, b))
      assert.is_false(fs.exists(a))
      assert.equal("A", fs.read_file(b))
    end)

    it("fails naming both paths: ENOENT, EISDIR, ENOTDIR, ENOTEMPTY", function()
      local missing, file, dir = tmp("missing"), tmp("file"), tmp("dir")
      assert(fs.write_file(file, "x"))
      assert(fs.mkdir(dir .. "/sub", {recursive = true}))
      assert_fail("ENOENT", pack(fs.rename(missing, file)), missing, file)
      assert_fail("EISDIR", pack(fs.rename(file, dir .. "/sub")), file, dir .. "/sub")
      assert_fail("ENOTDIR", pack(fs.rename(dir, file)), dir, file)
      local r = pack(fs.rename(dir .. "/sub", dir))
      assert.is_nil(r[1])
      assert.is_truthy(r[3] == "EINVAL" or r[3] == "ENOTEMPTY", r[2])
      assert.is_truthy(r[2]:find(" -> ", 1, true), r[2])
    end)
  end)

  describe("links and realpath", function()
    it("symlink and readlink round-trip the target", function()
      local link = tmp("link")
      assert.is_true(fs.symlink("some/relative/target", link))
      assert.equal("some/relative/target", fs.readlink(link))
      local long = ("x"):rep(1000)
      local link2 = tmp("link2")
      assert.is_true(fs.symlink(long, link2))
      assert.equal(long, fs.readlink(link2))
    end)

    it("symlink fails with EEXIST naming both paths; readlink with EINVAL, ENOENT", function()
      local link, file = tmp("link"), tmp("file")
      assert(fs.write_file(file, ""))
      assert_fail("EEXIST", pack(fs.symlink("target", file)), "target -> " .. file)
      assert_fail("ENOENT", pack(fs.symlink("target", tmp("no") .. "/link")), "target")
      assert_fail("EINVAL", pack(fs.readlink(file)), file)
      assert_fail("ENOENT", pack(fs.readlink(link)), link)
    end)

    it("realpath resolves links, . and ..", function()
      local dir = tmp("real")
      assert(fs.mkdir(dir .. "/x/y", {recursive = true}))
      assert(fs.symlink(dir .. "/x/y", dir .. "/ly"))
      local want = fs.realpath(dir) .. "/x/y"
      assert.equal(want, fs.realpath(dir .. "/ly"))
      assert.equal(want, fs.realpath(dir .. "/x/./y/../y"))
      assert_fail("ENOENT", pack(fs.realpath(dir .. "/nope")), dir .. "/nope")
      assert(fs.write_file(dir .. "/file", ""))
      assert_fail("ENOTDIR", pack(fs.realpath(dir .. "/file/x")), dir .. "/file/x")
    end)
  end)

  describe("chmod", function()
    it("sets the mode from a number or an octal string", function()
      local p = tmp()
      assert(fs.write_file(p, ""))
      assert.is_true(fs.chmod(p, "751"))
      assert.equal(489, fs.stat(p).mode)
      assert.is_true(fs.chmod(p, 384))
      assert.equal(384, fs.stat(p).mode)
      assert.is_true(fs.chmod(p, "04755")) -- setuid too
      assert.equal(2541, fs.stat(p).mode)
      assert_fail("ENOENT", pack(fs.chmod(tmp("missing"), 420)), "missing")
    end)
  end)

  describe("mkdtemp", function()
    it("makes a new private folder from a prefix", function()
      local a = assert(fs.mkdtemp(root .. "/tmp-"))
      local b = assert(fs.mkdtemp(root .. "/tmp-"))
      assert.not_equal(a, b)
      assert.matches("^" .. root:gsub("%p", "%%%0") .. "/tmp%-[%w]+$", a)
      assert.equal(#root + 5 + 6, #a)
      assert.equal("directory", fs.stat(a).type)
      assert.equal(448, fs.stat(a).mode) -- 0700
      assert_fail("ENOENT", pack(fs.mkdtemp(root .. "/missing/x-")), "missing")
    end)

    it("defaults to $TMPDIR/tide- or /tmp/tide-", function()
      local d = assert(fs.mkdtemp())
      local tmpdir = os.getenv("TMPDIR")
      if not tmpdir or tmpdir == "" then tmpdir = "/tmp" end
      assert.equal(tmpdir:gsub("/+$", "") .. "/tide-", d:sub(1, -7))
      assert.is_true(fs.remove(d))
    end)
  end)

  describe("EACCES", function()
    -- Root passes every permission check, so as root the calls run in a
    -- child tide as nobody (setpriv, or runuser), which is the case in CI.
    local function unprivileged()
      local out = S.run("id -u")
      if out:match("^(%d+)") ~= "0" then return "" end
      local uid = S.run("id -u nobody"):match("^(%d+)")
      local gid = S.run("id -g nobody"):match("^(%d+)")
      local function have(cmd)
        return S.run("sh -c " .. S.shell_quote("command -v " .. cmd)):find(cmd, 1, true)
      end
      if uid and gid and have("setpriv") then
        return ("setpriv --reuid=%s --regid=%s --clear-groups -- "):format(uid, gid)
      end
      if have("runuser") then
        return "runuser -u nobody -- "
      end
      return nil
    end

    it("is returned for files and folders the user may not use", function()
      local prefix = unprivileged()
      if not prefix then
        pending("running as root without setpriv or runuser: cannot drop privileges")
        return
      end
      -- a folder anyone may enter, owned by this user
      local dir = assert(fs.mkdtemp())
      assert(fs.chmod(dir, "755"))
      assert(fs.write_file(dir .. "/secret", "s", {mode = "600"}))
      assert(fs.chmod(dir .. "/secret", "600"))
      assert(fs.mkdir(dir .. "/locked", {mode = "700"}))
      assert(fs.chmod(dir .. "/locked", "700"))
      local code = ([[
        local fs = require "tide.fs"
        local d = %q
        local function show(...) local r = {...}; print(r[3], r[2]) end
        show(fs.read_file(d .. "/secret"))
        show(fs.open(d .. "/secret", "r"))
        show(fs.stat(d .. "/locked/x"))
        show(fs.readdir(d .. "/locked"))
        show(fs.write_file(d .. "/new", "x"))
        show(fs.mkdir(d .. "/newdir"))
        show(fs.remove(d .. "/secret"))
        show(fs.chmod(d .. "/secret", "644"))
      ]]):format(dir)
      local out, err, rc = S.run(prefix .. S.shell_quote(S.TIDE) .. " -e " ..
                                 S.shell_quote(code))
      assert(fs.remove(dir, {recursive = true}))
      assert.equal(0, rc, err)
      local lines = {}
      for l in out:gmatch("[^\n]+") do lines[#lines + 1] = l end
      assert.equal(8, #lines, out .. err)
      local want = {"/secret", "/secret", "/locked/x", "/locked", "/new",
                    "/newdir", "/secret", "/secret"}
      for i, l in ipairs(lines) do
        local code_, msg = l:match("^(%S+)\t(.*)$")
        local expect = i == 8 and "EPERM" or "EACCES"
        assert.equal(expect, code_, l)
        assert.is_truthy(msg:find(expect .. ": ", 1, true), l)
        assert.is_truthy(msg:find(dir .. want[i], 1, true), l)
      end
    end)
  end)

  describe("open and files", function()
    it("open fails with ENOENT, EISDIR, ENOTDIR and, with x, EEXIST", function()
      local missing, file = tmp("missing"), tmp()
      assert(fs.write_file(file, "x"))
      assert_fail("ENOENT", pack(fs.open(missing)), missing)
      assert_fail("ENOENT", pack(fs.open(missing .. "/x", "w")), missing .. "/x")
      assert_fail("EISDIR", pack(fs.open(root, "w")), root)
      assert_fail("EISDIR", pack(fs.open(root, "r+")), root)
      assert_fail("ENOTDIR", pack(fs.open(file .. "/x", "r")), file .. "/x")
      assert_fail("EEXIST", pack(fs.open(file, "wx")), file)
      assert_fail("EEXIST", pack(fs.open(file, "ax+")), file)
      local fresh = tmp()
      local f = assert(fs.open(fresh, "wx", "600"))
      assert.is_true(f:close())
      assert.equal(384, fs.stat(fresh).mode)
    end)

    it("r reads; w truncates; a appends; r+ keeps; w+ and a+ read too", function()
      local p = tmp()
      assert(fs.write_file(p, "hello"))
      local f = assert(fs.open(p))
      assert.equal("hello", f:read())
      assert.is_nil(f:read())
      assert.is_true(f:close())
      f = assert(fs.open(p, "rb+"))
      assert.is_true(f:write("J"))
      assert.is_true(f:close())
      assert.equal("Jello", fs.read_file(p))
      f = assert(fs.open(p, "a"))
      assert.is_true(f:write(" world"))
      assert.is_true(f:close())
      assert.equal("Jello world", fs.read_file(p))
      f = assert(fs.open(p, "a+"))
      assert.equal("Jello", f:read(5)) -- reads from the start
      assert.is_true(f:write("!")) -- writes at the end
      assert.is_true(f:close())
      assert.equal("Jello world!", fs.read_file(p))
      f = assert(fs.open(p, "w+"))
      assert.is_nil(f:read())
      assert.is_true(f:write("new"))
      assert.equal(0, f:seek("set"))
      assert.equal("new", f:read())
      assert.is_true(f:close())
      f = assert(fs.open(p, "w"))
      assert.is_true(f:close())
      assert.equal("", fs.read_file(p))
    end)

    it("read(n) returns up to n bytes, nil at the end; read(0) the empty string", function()
      local p, data = tmp(), bytes(200000, 5)
      assert(fs.write_file(p, data))
      local f = assert(fs.open(p))
      assert.equal("", f:read(0))
      assert.equal(data:sub(1, 10), f:read(10))
      assert.equal(data:sub(11, 150010), f:read(150000))
      assert.equal(data:sub(150011), f:read(100000))
      assert.is_nil(f:read(1))
      assert.is_nil(f:read())
      assert.is_true(f:close())
    end)

    it("seek sets, moves and reports the position", function()
      local p = tmp()
      assert(fs.write_file(p, "0123456789"))
      local f = assert(fs.open(p, "r+"))
      assert.equal(0, f:seek())
      assert.equal(10, f:seek("end"))
      assert.equal(7, f:seek("end", -3))
      assert.equal("789", f:read())
      assert.equal(2, f:seek("set", 2))
      assert.equal(5, f:seek("cur", 3))
      assert.is_true(f:write("-"))
      assert.equal(6, f:seek())
      assert_fail("EINVAL", pack(f:seek("set", -1)), p)
      assert.is_true(f:close())
      assert.equal("01234-6789", fs.read_file(p))
    end)

    it("lines() iterates over lines, reading ahead, with read, seek and write in step", function()
      local p = tmp()
      local long = ("L"):rep(200000)
      assert(fs.write_file(p, "one\n\nthree\n" .. long .. "\nlast"))
      local f = assert(fs.open(p, "r+"))
      local got = {}
      for l in f:lines() do got[#got + 1] = l end
      assert.same({"one", "", "three", long, "last"}, got)
      assert.is_nil(f:read())
      assert.equal(0, f:seek("set"))
      local it = f:lines()
      assert.equal("one", it())
      assert.equal(4, f:seek()) -- the read-ahead does not count
      assert.equal("\nth", f:read(3))
      assert.equal("ree", it())
      assert.is_true(f:write("X")) -- at the script's position, not the kernel's
      assert.equal(long:sub(2), it())
      assert.is_true(f:close())
      assert.equal("one\n\nthree\nX" .. long:sub(2) .. "\nlast", fs.read_file(p))
      -- an empty file
      local e = tmp()
      assert(fs.write_file(e, ""))
      f = assert(fs.open(e))
      for _ in f:lines() do error("no line expected") end
      assert.is_true(f:close())
    end)

    it("stat and sync", function()
      local p = tmp()
      local f = assert(fs.open(p, "w"))
      assert.is_true(f:write("12345"))
      assert.is_true(f:sync())
      local st = assert(f:stat())
      assert.equal("file", st.type)
      assert.equal(5, st.size)
      assert.equal(fs.stat(p).ino, st.ino)
      assert.is_true(f:close())
    end)

    it("reports EBADF, naming the path, for the wrong direction", function()
      local p = tmp()
      assert(fs.write_file(p, "x"))
      local f = assert(fs.open(p, "r"))
      assert_fail("EBADF", pack(f:write("y")), p)
      assert.is_true(f:close())
      f = assert(fs.open(p, "a"))
      assert_fail("EBADF", pack(f:read()), p)
      assert.is_true(f:close())
    end)

    it("close is idempotent; a closed file raises on use", function()
      local p = tmp()
      local f = assert(fs.open(p, "w"))
      assert.matches("^tide%.fs%.file %(.*" .. serial, tostring(f))
      assert.is_true(f:close())
      assert.is_true(f:close())
      assert.matches("closed", tostring(f))
      for _, m in ipairs {"read", "write", "seek", "lines", "stat", "sync"} do
        assert.matches("attempt to use a closed file", error_of(f[m], f, "x"))
      end
    end)

    it("close releases the descriptor; so does the garbage collector", function()
      local base = open_fds()
      local f = assert(fs.open(tmp(), "w"))
      assert.equal(base + 1, open_fds())
      assert.is_true(f:close())
      assert.equal(base, open_fds())
      -- opened in a task of their own, so that no stale stack slot of
      -- this test's frame keeps them
      assert.is_true(tide.spawn(function()
        for _ = 1, 5 do
          if not fs.open(tmp(), "w") then error("open failed") end
        end
      end):join(5))
      assert.equal(base + 5, open_fds())
      collectgarbage()
      collectgarbage()
      assert.is_true(eventually(function() return open_fds() == base end),
                     "the collected files' descriptors stayed open")
    end)

    it("closing wakes a task waiting on a read with closed, ECANCELED", function()
      local fifo = tmp("fifo")
      mkfifo(fifo)
      local base = open_fds()
      local f = assert(fs.open(fifo, "r+")) -- read and write: open does not block
      local reader = tide.spawn(function() return f:read(10) end)
      tide.yield() -- the reader waits; its read(2) blocks on a pool thread
      assert.equal("waiting", reader:status())
      assert.is_true(f:close()) -- does not wait for the blocked read(2)
      assert.same({n = 4, true, nil, "closed", "ECANCELED"}, pack(reader:join(5)))
      -- the descriptor stays open under the blocked read(2), and is
      -- closed on the pool once that ends
      assert.equal(base + 1, open_fds())
      poke_fifo(fifo)
      assert.is_true(eventually(function() return open_fds() == base end),
                     "the descriptor was not closed after the read ended")
    end)

    it("closing with many reads in flight: each gets its data or closed, no crash", function()
      local p, data = tmp(), bytes(4 * 1024 * 1024, 9)
      assert(fs.write_file(p, data))
      local base = open_fds()
      for round = 1, 5 do
        local f = assert(fs.open(p))
        local tasks = {}
        for i = 1, 16 do
          tasks[i] = tide.spawn(function() return pack(f:read(65536)) end)
        end
        if round % 2 == 0 then tide.yield() end -- some rounds close before they start
        local closer = tide.spawn(function() return f:close() end)
        assert.is_true(select(2, closer:join(5)))
        for i = 1, 16 do
          local ok, r = tasks[i]:join(5)
          assert.is_true(ok, tostring(r))
          if r[1] == nil then
            assert.same({n = 3, nil, "closed", "ECANCELED"}, r)
          else
            assert.equal(65536, #r[1])
          end
        end
      end
      assert.is_true(eventually(function() return open_fds() == base end))
    end)

    -- A read(1) whose wait ended early (timeout, cancel) goes on in the
    -- pool if a thread had started it (blocked here on an empty FIFO), or
    -- is taken off the queue. Either way the file stays usable, and its
    -- descriptor is closed once no job uses it. (Which later read gets
    -- which byte is a race with the abandoned one: not tested.)
    local function abandoned_read(stop)
      local fifo = tmp("fifo")
      mkfifo(fifo)
      local base = open_fds()
      local f = assert(fs.open(fifo, "r+"))
      stop(f)
      assert.equal("fifo", f:stat().type)
      assert.is_true(f:write("ab"))
      assert.is_true(f:close())
      poke_fifo(fifo)
      assert.is_true(eventually(function() return open_fds() == base end),
                     "the descriptor was not closed")
    end

    it("a timed-out read leaves the file usable; its descriptor closes after", function()
      abandoned_read(function(f)
        assert.same({n = 3, nil, "timed out", "ETIMEDOUT"},
                    pack(tide.timeout(0.02, function() return f:read(1) end)))
      end)
    end)

    it("a task cancelled while it reads is cancelled; the file stays usable", function()
      abandoned_read(function(f)
        local reader = tide.spawn(function() return f:read(1) end)
        tide.yield()
        assert.is_true(reader:cancel("stop"))
        local r = pack(reader:join(5))
        assert.equal("ECANCELED", r[3])
        assert.equal("cancelled", reader:status())
      end)
    end)
  end)

  describe("watch", function()
    -- events go to a channel; expect() takes events until the one wanted
    local function watcher(path)
      local ch = tide.channel(1000)
      local w, msg = fs.watch(path, function(ev, name) ch:send({ev, name}) end)
      assert(w, msg)
      return w, ch
    end

    local function expect(ch, ev, name)
      local seen = {}
      local deadline = tide.hrtime() + 5
      while true do
        local left = deadline - tide.hrtime()
        local e = left > 0 and ch:recv(left)
        if not e then
          error(("no %s event for %s (saw: %s)"):format(ev, name,
            table.concat(seen, ", ")), 2)
        end
        seen[#seen + 1] = e[1] .. " " .. e[2]
        if e[1] == ev and e[2] == name then return end
      end
    end

    it("sees create, modify, rename and delete in a folder", function()
      local dir = tmp("watched")
      assert(fs.mkdir(dir))
      local w, ch = watcher(dir)
      assert.equal("tide.fs.watcher (active)", tostring(w))
      assert(fs.write_file(dir .. "/a", "1"))
      expect(ch, "create", "a")
      assert(fs.write_file(dir .. "/a", "2", {append = true}))
      expect(ch, "modify", "a")
      assert(fs.rename(dir .. "/a", dir .. "/b"))
      expect(ch, "rename", "a")
      expect(ch, "rename", "b")
      assert(fs.chmod(dir .. "/b", "600"))
      expect(ch, "modify", "b")
      assert(fs.remove(dir .. "/b"))
      expect(ch, "delete", "b")
      assert(fs.mkdir(dir .. "/sub"))
      expect(ch, "create", "sub")
      w:close()
      assert.equal("tide.fs.watcher (closed)", tostring(w))
    end)

    it("watches a file, and closes itself when the file goes", function()
      local p = tmp()
      assert(fs.write_file(p, "1"))
      local w, ch = watcher(p)
      local name = p:match("[^/]+$")
      assert(fs.write_file(p, "2", {append = true}))
      expect(ch, "modify", name)
      assert(fs.remove(p))
      expect(ch, "delete", name)
      assert.is_true(eventually(function() return tostring(w):find("closed") end))
    end)

    it("runs the callback as a task that may wait", function()
      local dir = tmp("watched")
      assert(fs.mkdir(dir))
      local ch = tide.channel(100)
      local w = assert(fs.watch(dir, function(ev, name)
        if ev ~= "rename" then return end
        local st = fs.stat(dir .. "/" .. name) -- waits on the pool
        tide.sleep(0.001)
        ch:send(st and st.size)
      end))
      -- moved in whole, so that its size is known at its event
      local outside = tmp()
      assert(fs.write_file(outside, "12345"))
      assert(fs.rename(outside, dir .. "/x"))
      assert.equal(5, ch:recv(5))
      w:close()
    end)

    it("close is idempotent; a closed watcher raises on ref and unref", function()
      local w = watcher(root)
      assert.equal(w, w:unref())
      assert.equal(w, w:ref())
      w:close()
      w:close()
      assert.matches("closed watcher", error_of(w.ref, w))
      assert.matches("closed watcher", error_of(w.unref, w))
    end)

    it("fails with ENOENT and ENOTDIR naming the path", function()
      local missing, file = tmp("missing"), tmp()
      assert(fs.write_file(file, ""))
      local cb = function() end
      assert_fail("ENOENT", pack(fs.watch(missing, cb)), missing)
      assert_fail("ENOTDIR", pack(fs.watch(file .. "/x", cb)), file .. "/x")
    end)

    it("keeps the loop alive, unless unref'd", function()
      local dir = tmp("alive")
      assert(fs.mkdir(dir))
      -- the timer is unref'd: only the watcher keeps the child running
      -- until its event comes
      local out, err, rc = S.run_child(([[
        local fs = require "tide.fs"
        local dir = %q
        local w
        w = assert(fs.watch(dir, function(ev, name)
          print(ev, name)
          w:close()
        end))
        tide.after(0.05, function() fs.write_file(dir .. "/poke", "") end):unref()
      ]]):format(dir))
      assert.equal(0, rc, err)
      assert.equal("create\tpoke\n", out)
      out, err, rc = S.run_child(([[
        local fs = require "tide.fs"
        local w = assert(fs.watch(%q, function() print("event") end))
        w:unref()
        print("unref'd")
      ]]):format(dir))
      assert.equal(0, rc, err)
      assert.equal("unref'd\n", out)
    end)
  end)

  describe("misuse", function()
    it("raises naming the path argument", function()
      local one_path = {"read_file", "write_file", "stat", "lstat", "exists",
                        "readdir", "mkdir", "remove", "realpath", "readlink",
                        "chmod", "open", "watch"}
      for _, name in ipairs(one_path) do
        for _, bad in ipairs {42, {}} do
          local e = error_of(fs[name], bad, "x")
          assert.matches("bad argument #1 to '" .. name ..
                         "' %(path must be a string, got " .. type(bad), e)
        end
        assert.matches("bad argument #1 to '" .. name .. "' %(path must not contain a NUL",
                       error_of(fs[name], "a\0b", "x"))
      end
      assert.matches("bad argument #1 to 'rename' %(from must be a string", error_of(fs.rename, nil, "x"))
      assert.matches("bad argument #2 to 'rename' %(to must be a string", error_of(fs.rename, "x"))
      assert.matches("bad argument #1 to 'symlink' %(target must be a string", error_of(fs.symlink, 1, "x"))
      assert.matches("bad argument #2 to 'symlink' %(path must be a string", error_of(fs.symlink, "x", false))
      assert.matches("bad argument #1 to 'mkdtemp' %(prefix must be a string", error_of(fs.mkdtemp, 5))
    end)

    it("raises naming bad flags, modes, data and options", function()
      for _, flags in ipairs {"rw", "x", "rx", "r++", "wxx", "", "W", 1, true} do
        assert.matches("bad argument #2 to 'open' %(flags must be", error_of(fs.open, "x", flags))
      end
      for _, mode in ipairs {-1, 4096, 1.5, "9", "rwx", "0x1ff", true} do
        assert.matches("bad argument #3 to 'open' %(mode must be", error_of(fs.open, "x", "w", mode))
        assert.matches("bad argument #2 to 'chmod' %(mode must be", error_of(fs.chmod, "x", mode))
        assert.matches("bad argument #3 to 'write_file' %(mode must be",
                       error_of(fs.write_file, "x", "", {mode = mode}))
        assert.matches("bad argument #2 to 'mkdir' %(mode must be",
                       error_of(fs.mkdir, "x", {mode = mode}))
      end
      assert.matches("bad argument #2 to 'chmod' %(mode expected", error_of(fs.chmod, "x"))
      assert.matches("bad argument #2 to 'write_file' %(data must be a string, got nil",
                     error_of(fs.write_file, "x"))
      assert.matches("bad argument #3 to 'write_file' %(unknown option 'atomik'",
                     error_of(fs.write_file, "x", "", {atomik = true}))
      assert.matches("bad argument #3 to 'write_file' %(option 'append' must be a boolean",
                     error_of(fs.write_file, "x", "", {append = 1}))
      assert.matches("'append' and 'atomic' cannot be combined",
                     error_of(fs.write_file, "x", "", {append = true, atomic = true}))
      assert.matches("bad argument #2 to 'read_file' %(options must be a table",
                     error_of(fs.read_file, "x", 10))
      assert.matches("bad argument #2 to 'read_file' %(option 'max' must be an integer",
                     error_of(fs.read_file, "x", {max = -1}))
      assert.matches("bad argument #2 to 'mkdir' %(option 'recursive' must be a boolean",
                     error_of(fs.mkdir, "x", {recursive = "yes"}))
      assert.matches("bad argument #2 to 'remove' %(unknown option 'force'",
                     error_of(fs.remove, "x", {force = true}))
      assert.matches("bad argument #2 to 'watch' %(function expected, got nil",
                     error_of(fs.watch, "x"))
    end)

    it("raises for bad file method arguments", function()
      local f = assert(fs.open(tmp(), "w+"))
      assert.matches("bad argument #1 to 'read' %(count must be", error_of(f.read, f, -1))
      assert.matches("bad argument #1 to 'read' %(count must be", error_of(f.read, f, "all"))
      assert.matches("bad argument #1 to 'write' %(data must be a string", error_of(f.write, f, {}))
      assert.matches("bad argument #1 to 'seek' %(whence must be", error_of(f.seek, f, "start"))
      assert.matches("bad argument #2 to 'seek' %(offset must be an integer", error_of(f.seek, f, "set", 0.5))
      assert.matches("bad argument #1 to 'read' %(file expected, got string", error_of(f.read, "f"))
      assert.matches("bad argument #1 to 'close' %(file expected", error_of(f.close, {}))
      assert.is_true(f:close())
    end)

    it("raises outside a task, naming the call", function()
      local co = coroutine.wrap(function() return fs.stat("/") end)
      assert.matches("'stat' cannot wait inside a coroutine", error_of(co))
    end)
  end)
end)
