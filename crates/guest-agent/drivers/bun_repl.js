// Persistent JavaScript/TypeScript REPL driven by the sandbox agent.
//
// Run as `bun bun_repl.js CELLS_DIR`. The agent writes each cell's code to
// CELLS_DIR/<seq>.ts and its environment (NUL-separated K=V) to CELLS_DIR/<seq>.env, then
// sends "<seq> <nonce>" on fd 3; the answer "<nonce> <status>" goes to fd 4. stdout and
// stderr belong to the code alone.
//
// Each cell is transpiled in Bun's REPL mode (top-level declarations become globals, the
// cell becomes an IIFE, async when it awaits, returning its last value) and run in this
// global scope. The event loop keeps running between cells, so servers and timers a cell
// starts keep working; requests are read from fd 3 asynchronously for that reason.
"use strict";

(() => {
  const fs = require("fs");
  const path = require("path");
  const vm = require("vm");
  const { createRequire, isBuiltin } = require("module");

  const REQUESTS = 3;
  const REPLIES = 4;
  const cells = process.argv[2];
  const transpiler = new Bun.Transpiler({ loader: "ts", replMode: true });

  // `require` resolves from the working directory, where the session's packages live.
  globalThis.require = createRequire(path.join(process.cwd(), "[repl]"));

  // Errors nobody handled: during a cell they fail it; between cells they are printed
  // (and belong to no call) but must not end the session.
  let current = null;
  const unhandled = (what) => (err) => {
    try {
      process.stderr.write(`${what}: ${withoutDriverFrames(describe(err))}\n`);
    } catch {}
    if (current) current.failed = true;
  };
  process.on("unhandledRejection", unhandled("Unhandled promise rejection"));
  process.on("uncaughtException", unhandled("Uncaught exception"));

  function describe(err) {
    try {
      return Bun.inspect(err);
    } catch {
      return String(err);
    }
  }

  // The stack runs on into the driver; those frames are noise to the code's author.
  function withoutDriverFrames(text) {
    return text
      .split("\n")
      .filter((line) => !line.includes(__filename))
      .join("\n");
  }

  function reportError(err) {
    const text = withoutDriverFrames(err instanceof Error ? describe(err) : `Uncaught ${describe(err)}`);
    process.stderr.write(text.endsWith("\n") ? text : `${text}\n`);
  }

  // `import` in a cell resolves like in a script in the working directory. We resolve to
  // an absolute path ourselves: Bun's own resolution for code without a file caches the
  // directory's entries, so a file written there after the first import (by a later cell,
  // or uploaded) would never be found.
  function importFromCwd(specifier) {
    let target = specifier;
    if (/^\.\.?(\/|$)/.test(specifier)) {
      target = path.resolve(process.cwd(), specifier);
    } else if (!path.isAbsolute(specifier) && !/^[a-z][a-z0-9+.-]*:/i.test(specifier) && !isBuiltin(specifier)) {
      try {
        target = Bun.resolveSync(specifier, process.cwd());
      } catch {}
    }
    return import(target);
  }

  // Declarations are not echoed (`const data = …` prints nothing, as at the Node prompt);
  // other final values are. The transpiler hoists a cell's declarations to `var` lines
  // before the IIFE and returns the last statement's value as `value: <expr>`.
  function declaresLast(js) {
    const at = js.lastIndexOf("\n    value: ");
    if (at < 0) return false;
    const value = js.slice(at + "\n    value: ".length);
    const hoisted = new Set();
    for (const m of js.matchAll(/^var ([^;\n]+);$/gm)) {
      for (const name of m[1].split(",")) hoisted.add(name.trim());
    }
    const simple = /^([\w$]+) = (?!=)/.exec(value);
    if (simple) return hoisted.has(simple[1]);
    return hoisted.size > 0 && /^[\[{][\w$\s,:.\[\]{}]*[\]}] = (?!=)/.test(value);
  }

  function readEnv(seq) {
    let data;
    try {
      data = fs.readFileSync(path.join(cells, `${seq}.env`), "utf8");
    } catch {
      return [];
    }
    const out = [];
    for (const entry of data.split("\0")) {
      const eq = entry.indexOf("=");
      if (eq > 0) out.push([entry.slice(0, eq), entry.slice(eq + 1)]);
    }
    return out;
  }

  function applyEnv(entries) {
    const saved = new Map();
    for (const [key, value] of entries) {
      if (!saved.has(key)) {
        saved.set(key, Object.prototype.hasOwnProperty.call(process.env, key) ? process.env[key] : undefined);
      }
      process.env[key] = value;
    }
    return saved;
  }

  function restoreEnv(saved) {
    for (const [key, value] of saved) {
      if (value === undefined) delete process.env[key];
      else process.env[key] = value;
    }
  }

  // Writes to a pipe may be queued; the answer must not overtake them.
  function flushed(stream) {
    return new Promise((resolve) => {
      try {
        if (!stream.write("", () => resolve())) stream.once("drain", () => resolve());
      } catch {
        resolve();
      }
    });
  }

  const turn = () => new Promise((resolve) => setImmediate(resolve));
  const tick = () => new Promise((resolve) => setTimeout(resolve, 0));

  function reply(line) {
    const data = Buffer.from(`\n${line}\n`);
    let off = 0;
    while (off < data.length) off += fs.writeSync(REPLIES, data, off);
  }

  async function runCell(seq) {
    const source = fs.readFileSync(path.join(cells, `${seq}.ts`), "utf8");
    let js;
    try {
      js = transpiler.transformSync(source);
    } catch (err) {
      reportError(err);
      return 1;
    }
    try {
      const result = await vm.runInThisContext(js, {
        filename: `<cell ${seq}>`,
        importModuleDynamically: importFromCwd,
      });
      if (result && typeof result === "object" && "value" in result && result.value !== undefined && !declaresLast(js)) {
        process.stdout.write(`${describe(result.value)}\n`);
      }
      return 0;
    } catch (err) {
      reportError(err);
      return 1;
    }
  }

  async function serve(seq, nonce) {
    const saved = applyEnv(readEnv(seq));
    current = { failed: false };
    let status;
    try {
      status = await runCell(seq);
    } catch (err) {
      reportError(err);
      status = 1;
    }
    // Let rejections and timer errors the cell left behind surface while it is current.
    await turn();
    await tick();
    await turn();
    if (current.failed && status === 0) status = 1;
    current = null;
    restoreEnv(saved);
    await Promise.all([flushed(process.stdout), flushed(process.stderr)]);
    try {
      reply(`${nonce} ${status}`);
    } catch {
      process.exit(0);
    }
  }

  // One cell at a time, in the order they arrive.
  let queue = Promise.resolve();
  let pending = "";
  const requests = fs.createReadStream("", { fd: REQUESTS, autoClose: false, encoding: "latin1" });
  requests.on("data", (chunk) => {
    pending += chunk;
    let nl;
    while ((nl = pending.indexOf("\n")) >= 0) {
      const parts = pending.slice(0, nl).split(" ");
      pending = pending.slice(nl + 1);
      if (parts.length !== 2) continue;
      const [seq, nonce] = parts;
      queue = queue.then(() => serve(seq, nonce));
    }
  });
  // The agent is gone: so is the session.
  requests.on("end", () => process.exit(0));
  requests.on("error", () => process.exit(0));

  reply("ready");
})();
