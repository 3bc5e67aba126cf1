"""Every error and warning distopt can raise is documented in docs/troubleshooting.md.

The messages are read from the source with `ast`: the first argument of every
`raise X(...)`, `warnings.warn(...)`, `sys.stderr.write(...)`, `write_uncaptured(...)` and
`print(..., file=sys.stderr)` in `distopt/`, and the message argument of
`end_job(abort, code, message, leader)` (the deadline's print-and-abort). An f-string becomes a
template of constant fragments and placeholders; names, string concatenation, `.format`,
`sep.join([...])` and calls to functions of the same module (and to methods: of a class of the
same module, else of the one class in `distopt/` that defines that name) are followed. The page
must contain the template's start (its constant text up to `KEY_CHARS` characters, a
placeholder standing for each field), so a message can be written there as
`Argument `<name>` must be ... Received: <value>`.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "distopt"
PAGE = ROOT / "docs" / "troubleshooting.md"
KEY_CHARS = 30
FIELD = None  # a template part that is a formatted value
STDERR_CALLS = {"warnings.warn", "sys.stderr.write", "write_uncaptured"}
# Helpers that print a message they are given: name -> index of the message argument.
MESSAGE_CALLS = {"end_job": 2}
# Messages that are not distopt's own text: (file, source of the message argument) -> why.
NOT_OURS = {
    ("distopt/launch/_runner.py", "code"): "re-prints the script's own `sys.exit(message)`",
    (
        "distopt/checkpoint/_collectives.py",
        "errors[0][1] + (f' (on rank {ranks})' if comm.size > 1 else '')",
    ): "re-raises another rank's checkpoint message, each documented where it is made",
    (
        "distopt/checkpoint/_collectives.py",
        "'; '.join((f'rank {r}: {e}' for r, e in errors))",
    ): "joins other ranks' checkpoint messages, each documented where it is made",
    (
        "distopt/launch/_restarts.py",
        "msg",
    ): "the default logger prints the restart messages made (and documented) in the same module",
    (
        "distopt/collectives/_deadline.py",
        "message + '\\n'",
    ): "end_job prints the message its callers pass; each is read at its end_job call",
    (
        "distopt/launch/_shm_cleanup.py",
        "main()",
    ): "exits with main()'s return status (a number); its print is an ordinary report",
}


@dataclass(frozen=True)
class Message:
    where: str  # file:line
    kind: str
    parts: tuple  # str fragments and FIELD

    @property
    def key(self) -> tuple:
        """The leading parts up to KEY_CHARS constant characters, without edge fields."""
        out, chars = [], 0
        for part in self.parts:
            if chars >= KEY_CHARS:
                break
            out.append(part)
            if part is not FIELD:
                chars += len(part.strip())
        while out and out[0] is FIELD:
            out.pop(0)
        while out and out[-1] is FIELD:
            out.pop()
        return tuple(out)

    def shown(self) -> str:
        return "".join("<...>" if p is FIELD else p for p in self.key)


def _squash(parts: list) -> list:
    """Adjacent fragments joined, whitespace collapsed, adjacent fields merged."""
    out: list = []
    for p in parts:
        if p is FIELD:
            if not out or out[-1] is not FIELD:
                out.append(FIELD)
        elif p:
            if out and out[-1] is not FIELD:
                out[-1] += p
            else:
                out.append(p)
    return [p if p is FIELD else re.sub(r"\s+", " ", p) for p in out]


class _Module:
    def __init__(self, path: Path):
        self.path = path
        self.tree = ast.parse(path.read_text(), filename=str(path))
        self.functions = {
            n.name: n
            for n in self.tree.body
            if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.methods = {
            f.name: f
            for n in self.tree.body
            if isinstance(n, ast.ClassDef)
            for f in n.body
            if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
        }
        self.constants = {
            t.id: n.value
            for n in self.tree.body
            if isinstance(n, ast.Assign)
            for t in n.targets
            if isinstance(t, ast.Name)
        }
        self.imported = {}  # local name -> (module file, name) for `from distopt... import`
        for n in self.tree.body:
            if isinstance(n, ast.ImportFrom):
                target = _module_file(path, n.module, n.level)
                for alias in n.names if target else ():
                    self.imported[alias.asname or alias.name] = (target, alias.name)
        self.parents: dict[ast.AST, ast.AST] = {}
        for node in ast.walk(self.tree):
            for child in ast.iter_child_nodes(node):
                self.parents[child] = node

    def _function_of(self, node):
        while node in self.parents:
            node = self.parents[node]
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                return node
        return None

    def _local(self, name: str, at: ast.AST):
        """The first value assigned to `name` in the function around `at`, else the module's."""
        func = self._function_of(at)
        if func is not None:
            for node in ast.walk(func):
                if isinstance(node, ast.Assign) and any(
                    isinstance(t, ast.Name) and t.id == name for t in node.targets
                ):
                    return node.value
        return self.constants.get(name)

    def template(self, node, at, depth=0) -> list:
        if depth > 8:
            return [FIELD]
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            return [node.value]
        if isinstance(node, ast.JoinedStr):
            out = []
            for v in node.values:
                out += [v.value] if isinstance(v, ast.Constant) else [FIELD]
            return out
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            return self.template(node.left, at, depth + 1) + self.template(
                node.right, at, depth + 1
            )
        if isinstance(node, ast.Name):
            value = self._local(node.id, at)
            return [FIELD] if value is None else self.template(value, value, depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner, attr = node.func.value, node.func.attr
            if attr == "format" and isinstance(owner, ast.Constant):
                pieces = re.split(r"\{[^{}]*\}", owner.value)
                out = [pieces[0]]
                for piece in pieces[1:]:
                    out += [FIELD, piece]
                return out
            if attr == "join" and node.args:
                items = node.args[0]
                if isinstance(items, ast.Name):
                    items = self._local(items.id, node) or items
                if isinstance(items, ast.List | ast.Tuple) and items.elts:
                    return self.template(items.elts[0], at, depth + 1) + [FIELD]
            found = _method(self, attr)
            if found is not None:
                module, func = found
                returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value]
                if returns:
                    return module.template(returns[-1].value, returns[-1], depth + 1)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            module, func = self, self.functions.get(node.func.id)
            if func is None and node.func.id in self.imported:
                file, name = self.imported[node.func.id]
                module = _module(file)
                func = module.functions.get(name)
            if func is not None:
                returns = [n for n in ast.walk(func) if isinstance(n, ast.Return) and n.value]
                if returns:
                    return module.template(returns[-1].value, returns[-1], depth + 1)
        return [FIELD]


def _module_file(path: Path, name: str | None, level: int) -> Path | None:
    """The file of `from <level dots><name> import ...` inside distopt/, else None."""
    if level:
        base = path.parent
        for _ in range(level - 1):
            base = base.parent
        parts = name.split(".") if name else []
    elif name and name.split(".")[0] == "distopt":
        base, parts = ROOT, name.split(".")
    else:
        return None
    target = base.joinpath(*parts)
    for candidate in (target.with_suffix(".py"), target / "__init__.py"):
        if candidate.is_file() and PACKAGE in candidate.parents:
            return candidate
    return None


_MODULES: dict[Path, _Module] = {}


def _module(path: Path) -> _Module:
    if path not in _MODULES:
        _MODULES[path] = _Module(path)
    return _MODULES[path]


def _method(module: _Module, name: str):
    """(module, method) for `<object>.name()`: a method of a class of `module`, else the only
    method of that name in distopt/ (None when there is none, or several)."""
    if name in module.methods:
        return module, module.methods[name]
    found = [
        (m, m.methods[name])
        for m in map(_module, sorted(PACKAGE.rglob("*.py")))
        if name in m.methods
    ]
    return found[0] if len(found) == 1 else None


def _message_argument(node) -> tuple[str, ast.AST] | None:
    if isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
        return f"raise {ast.unparse(node.exc.func)}", node.exc.args[0]
    if isinstance(node, ast.Call) and node.args:
        name = ast.unparse(node.func)
        to_stderr = name == "print" and any(
            k.arg == "file" and ast.unparse(k.value) == "sys.stderr" for k in node.keywords
        )
        if name in STDERR_CALLS or to_stderr:
            return name, node.args[0]
        if name in MESSAGE_CALLS and len(node.args) > MESSAGE_CALLS[name]:
            return name, node.args[MESSAGE_CALLS[name]]
    return None


def source_messages() -> tuple[list[Message], list[str]]:
    """Every message in distopt/, and the places whose text could not be found."""
    messages, unresolved = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = _module(path)
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(module.tree):
            found = _message_argument(node)
            if found is None:
                continue
            kind, arg = found
            if (rel, ast.unparse(arg)) in NOT_OURS:
                continue
            message = Message(
                f"{rel}:{node.lineno}", kind, tuple(_squash(module.template(arg, arg)))
            )
            if message.key:
                messages.append(message)
            else:
                unresolved.append(f"{message.where}: {kind}({ast.unparse(arg)})")
    return messages, unresolved


def _pattern(key: tuple) -> re.Pattern:
    return re.compile(".{0,80}?".join(re.escape(p) for p in key if p is not FIELD))


def page_text() -> str:
    return re.sub(r"\s+", " ", PAGE.read_text())


def test_every_message_in_the_source_has_a_text():
    _, unresolved = source_messages()
    assert not unresolved, (
        "These messages have no constant text the test can find; write the message as a "
        "string or f-string at the raise (or in a module-level constant / local variable), or "
        "add it to NOT_OURS with the reason:\n" + "\n".join(unresolved)
    )


def test_every_error_and_warning_is_in_troubleshooting():
    messages, _ = source_messages()
    text = page_text()
    missing = {}
    for m in messages:
        if not _pattern(m.key).search(text):
            missing.setdefault(m.shown(), []).append(f"{m.where} ({m.kind})")
    assert not missing, (
        f"{len(missing)} message(s) from distopt/ are not in docs/troubleshooting.md. Add each "
        "(with its cause and fix), writing <...> fields as placeholders such as <name>:\n"
        + "\n".join(f"  {text!r}  from {', '.join(where)}" for text, where in missing.items())
    )


def test_extraction_finds_the_known_kinds():
    """Guards the extractor itself: each kind of source construct yields its text."""
    messages, _ = source_messages()
    shown = {m.shown() for m in messages}
    kinds = {m.kind for m in messages}
    # (the one `write_uncaptured` call prints end_job's argument: it is read at the end_job calls)
    assert {"warnings.warn", "sys.stderr.write", "print", "end_job"} <= kinds
    assert "raise RuntimeError" in kinds and "raise SystemExit" in kinds
    # a module-level constant, a helper returning "\n".join([...]), a local variable
    assert any(s.startswith("`apply_gradients()` cannot be called in cross-replica") for s in shown)
    assert any(s.startswith("distopt: collective deadline exceeded on rank") for s in shown)
    assert any(s.startswith("Ranks disagree about") for s in shown)
    assert any(s.startswith("Skipping variable loading for optimizer") for s in shown)
    # f-strings starting with a field keep the constant text that follows it
    assert any(s.startswith("Argument `<...>` must be a float") for s in shown)
    assert len(messages) > 150


def test_not_ours_entries_still_exist():
    present = set()
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text())):
            found = _message_argument(node)
            if found is not None:
                present.add((rel, ast.unparse(found[1])))
    assert set(NOT_OURS) <= present, set(NOT_OURS) - present


def test_a_missing_message_is_reported(tmp_path):
    """The pattern matches the documented form and rejects text that lacks a fragment."""
    key = ("Argument `", FIELD, "` must be a float in [", FIELD, "]. Received")
    pattern = _pattern(key)
    assert pattern.search("x Argument `<name>` must be a float in [<low>, <high>]. Received: y")
    assert not pattern.search("Argument `<name>` must be a float. Received: <value>")


def test_none_gradient_warning_tells_a_custom_loop_what_to_do():
    """The warning keeps Keras's text and adds the fix for loops without `model.compile()`."""
    import warnings

    import numpy as np

    import distopt

    a, b = distopt.Variable([1.0], name="a"), distopt.Variable([2.0], name="b")
    opt = distopt.optimizers.SGD(learning_rate=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        opt.apply_gradients([(None, a), (np.array([1.0]), b)])
    text = " ".join(str(w.message) for w in caught)
    assert "Gradients do not exist for variables ['a'] when minimizing the loss." in text
    assert "In a custom training loop, compute a gradient for each of these variables" in text
    assert a.numpy().tolist() == [1.0] and b.numpy().tolist() == [1.5]


def test_exit_codes_table_lists_the_codes_in_the_source():
    from distopt.collectives._deadline import DEADLINE_EXIT_CODE
    from distopt.distribute._abort import ABORT_EXIT_CODE

    table = re.findall(r"^\|\s*(\d+)\s*\|", PAGE.read_text(), flags=re.MULTILINE)
    for code in (ABORT_EXIT_CODE, DEADLINE_EXIT_CODE):
        assert str(code) in table, f"exit code {code} is not in the exit-code table"
