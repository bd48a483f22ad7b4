"""Persistent Python REPL driven by the sandbox agent.

Run as `python3 -u python_repl.py CELLS_DIR`. The agent writes each cell's code to
CELLS_DIR/<seq>.py and its environment (NUL-separated K=V) to CELLS_DIR/<seq>.env, then
sends "<seq> <nonce>" on fd 3; the answer "<nonce> <status>" goes to fd 4. stdout and
stderr belong to the code alone.

Everything of the driver lives inside `_serve`, so the session's namespace (a fresh
`__main__` module) holds nothing but what the code puts there.
"""


def _serve():
    import ast
    import builtins
    import linecache
    import os
    import sys
    import traceback
    import types

    requests, replies = 3, 4
    # Programs the code starts must never hold the control pipes (a forked child still
    # does; it is caught below).
    os.set_inheritable(requests, False)
    os.set_inheritable(replies, False)
    cells = sys.argv[1]
    driver_pid = os.getpid()
    driver_file = __file__

    # The session's namespace is a fresh module registered as __main__, so that
    # `if __name__ == "__main__":` holds and pickling by reference (multiprocessing with
    # fork) finds functions the session defined.
    main = types.ModuleType("__main__")
    main.__dict__.update(__builtins__=builtins, __spec__=None, __loader__=None)
    sys.modules["__main__"] = main
    namespace = main.__dict__
    # As in the interactive interpreter: imports look in the current directory first.
    sys.argv = [""]
    sys.path[0] = ""
    sys.meta_path.insert(0, _SpawnHook(main, driver_file))

    loop = None

    def run_code(code):
        nonlocal loop
        result = eval(code, namespace)
        if code.co_flags & 0x80 and result is not None:  # CO_COROUTINE: top-level await
            if loop is None:
                import asyncio

                # One loop for the whole session, so tasks a cell starts keep running
                # whenever a later cell awaits.
                loop = asyncio.new_event_loop()
                asyncio.set_event_loop(loop)
            loop.run_until_complete(result)

    def user_traceback(tb):
        # Leading frames are ours (and asyncio's, for top-level await); the code's
        # start at the first frame of a cell or of a module it called.
        asyncio = sys.modules.get("asyncio") if loop is not None else None
        asyncio_dir = os.path.dirname(asyncio.__file__) + os.sep if asyncio else None
        while tb is not None:
            name = tb.tb_frame.f_code.co_filename
            if name != driver_file and not (asyncio_dir and name.startswith(asyncio_dir)):
                break
            tb = tb.tb_next
        return tb

    def report_exception(exc, tb):
        exc = exc.with_traceback(tb)
        sys.last_type, sys.last_value, sys.last_traceback = type(exc), exc, tb
        try:
            if sys.excepthook is sys.__excepthook__:
                # The built-in hook reads source lines from disk; this one reads them
                # from linecache, where the cells are.
                traceback.print_exception(type(exc), exc, tb)
            else:
                sys.excepthook(type(exc), exc, tb)
        except BaseException:
            traceback.print_exception(type(exc), exc, tb)

    def exit_status(exc):
        # The same rules as the interpreter's own exit: None is 0, an int is the status,
        # anything else is printed and means 1.
        code = exc.code
        if code is None:
            return 0
        if isinstance(code, int):
            return code & 0xFF
        try:
            print(code, file=sys.stderr)
        except BaseException:
            pass
        return 1

    def run_cell(seq):
        filename = f"<cell {seq}>"
        with open(os.path.join(cells, f"{seq}.py"), encoding="utf-8") as f:
            source = f.read()
        lines = source.splitlines(True)
        if lines and not lines[-1].endswith("\n"):
            lines[-1] += "\n"
        linecache.cache[filename] = (len(source), None, lines, filename)
        flags = ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
        try:
            tree = ast.parse(source, filename, "exec")
            last = None
            if tree.body and isinstance(tree.body[-1], ast.Expr):
                # A final expression is echoed like at the interactive prompt.
                last = ast.Interactive(body=[tree.body.pop()])
            codes = [compile(tree, filename, "exec", flags)]
            if last is not None:
                codes.append(compile(last, filename, "single", flags))
        except (SyntaxError, ValueError, OverflowError) as exc:
            # Incomplete input is an error at once: there is no more input to wait for.
            # Where in the driver it was found is of no interest.
            report_exception(exc, None)
            return 1
        try:
            for code in codes:
                run_code(code)
        except SystemExit as exc:
            return exit_status(exc)
        except BaseException as exc:
            report_exception(exc, user_traceback(exc.__traceback__))
            return 1
        return 0

    def apply_env(seq):
        saved = {}
        try:
            with open(os.path.join(cells, f"{seq}.env"), "rb") as f:
                entries = f.read().split(b"\0")
        except OSError:
            return saved
        for entry in entries:
            key, sep, value = entry.partition(b"=")
            if not sep:
                continue
            key, value = os.fsdecode(key), os.fsdecode(value)
            if key not in saved:
                saved[key] = os.environ.get(key)
            try:
                os.environ[key] = value
            except (ValueError, OSError):
                pass
        return saved

    def restore_env(saved):
        for key, value in saved.items():
            try:
                if value is None:
                    os.environ.pop(key, None)
                else:
                    os.environ[key] = value
            except (ValueError, OSError):
                pass

    def flush():
        for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
            try:
                stream.flush()
            except BaseException:
                pass

    def reply(line):
        data = f"\n{line}\n".encode()
        while data:
            data = data[os.write(replies, data):]

    pending = b""

    def next_request():
        nonlocal pending
        while b"\n" not in pending:
            chunk = os.read(requests, 4096)
            if not chunk:
                return None
            pending += chunk
        line, _, pending = pending.partition(b"\n")
        return line.decode("ascii", "replace").split(" ")

    reply("ready")
    while True:
        request = next_request()
        if request is None:
            # The agent is gone; do not wait for the code's threads.
            flush()
            os._exit(0)
        if len(request) != 2:
            continue
        seq, nonce = request
        saved = apply_env(seq)
        try:
            status = run_cell(seq)
        except BaseException as exc:
            # Reading the cell failed, or something escaped the handlers above.
            try:
                report_exception(exc, user_traceback(exc.__traceback__))
            except BaseException:
                pass
            status = 1
        flush()
        if os.getpid() != driver_pid:
            # A child the cell forked fell through to here: it must neither answer nor
            # run later cells.
            os._exit(status)
        restore_env(saved)
        flush()
        try:
            reply(f"{nonce} {status}")
        except OSError:
            os._exit(0)


class _SpawnHook:
    """Patches `multiprocessing.spawn` when (if ever) the code imports it.

    A worker started with 'spawn' or 'forkserver' is a fresh interpreter that rebuilds
    `__main__` from a file, and a session's namespace has none: unpickling a function the
    session defined fails in every worker, and a Pool then restarts workers forever. The
    patch names this file as the main module to load, so the workers get `__getattr__`
    below, which says what is wrong and interrupts the waiting parent instead.
    """

    def __init__(self, main, driver_file):
        self.main = main
        self.driver_file = driver_file

    def find_spec(self, name, path, target=None):
        if name != "multiprocessing.spawn":
            return None
        import importlib.util
        import sys

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        main, driver_file = self.main, self.driver_file

        def exec_and_patch(module):
            exec_module(module)
            prepare = module.get_preparation_data

            def get_preparation_data(name):
                data = prepare(name)
                if sys.modules.get("__main__") is main and not (
                    "init_main_from_name" in data or "init_main_from_path" in data
                ):
                    data["init_main_from_path"] = driver_file
                return data

            module.get_preparation_data = get_preparation_data

        spec.loader.exec_module = exec_and_patch
        return spec


def __getattr__(name):
    # Only in a 'spawn'/'forkserver' worker, which loads this file as `__mp_main__` (see
    # _SpawnHook) and asks it for the session's definitions it cannot have.
    if __name__ != "__mp_main__" or (name.startswith("__") and name.endswith("__")):
        raise AttributeError(name)
    import os
    import signal
    import sys

    sys.stderr.write(
        f"sandbox: {name!r} was defined in the session, and a multiprocessing worker "
        "started with 'spawn' or 'forkserver' is a fresh interpreter that cannot see the "
        "session's definitions. Use the default 'fork' start method, or define "
        f"{name!r} in a module file and import it.\n"
    )
    sys.stderr.flush()
    try:
        # The code waiting for this worker would otherwise wait for results that never
        # come. It runs in the REPL, which leads the process group every worker is in
        # (a forkserver worker's parent is the fork server, which ignores SIGINT).
        os.kill(os.getpgid(0), signal.SIGINT)
    except OSError:
        pass
    raise AttributeError(f"{name!r} is defined only in the session's namespace")


if __name__ == "__main__":
    _serve()
