#!/usr/bin/env python3
"""Find import cycles between the files (modules) of the root crate's `src/`.

Every `src/**/*.rs` file reachable through `mod` declarations from `src/lib.rs` (and from the
binary roots `src/main.rs`, `src/bin/*.rs`) is parsed. A file depends on another when its
code names something defined there, through:

  * `use crate::...`, `use super::...`, `use self::...`, `use child_module::...` trees;
  * paths written inline in code: `crate::worker::http_date()`, `super::x::f`, `child::f`,
    and `alias::f` where `alias` was imported from this crate by a `use`.

A path is resolved to the FILE that defines what it names: `crate::http::router::forward`
is `src/http/router.rs`; `crate::upstream::Cluster`, re-exported by `upstream/mod.rs`
(`pub use cluster::Cluster`), is `src/upstream/cluster.rs`. Hence:

  * `mod` declarations only build the module tree; they are not dependencies;
  * a re-export (`pub use`) is not a dependency of the re-exporting file unless that file
    also uses the name itself;
  * naming a module whose file only declares submodules and re-exports (a facade such as
    `upstream/mod.rs`) is not an edge.

Test code is ignored: any item under `#[cfg(test)]` (e.g. `mod tests { use super::*; }`).

The graph's strongly connected components with more than one file are cycle groups; for each
group the script prints one concrete cycle through every edge inside it, with the lines that
create each edge. Exit status 0 when there is no cycle, 1 otherwise; except that cycle groups
listed in the allowlist (`tools/module_cycles_allow.txt`: known cycles in files being
rewritten elsewhere) are reported without failing. The allowlist must match exactly: a listed
group that has shrunk or gone fails too, so that the entry is narrowed or deleted and the
cycle cannot silently come back. `--strict` ignores the allowlist.

Usage:
  python3 tools/module_cycles.py              # check this repository's root crate
  python3 tools/module_cycles.py --strict     # ... and fail on allowlisted cycles too
  python3 tools/module_cycles.py --edges      # also print every file dependency
  python3 tools/module_cycles.py --root DIR   # check the crate at DIR (has DIR/src/lib.rs)
  python3 tools/module_cycles.py --self-test  # check the checker on synthetic crates

Python 3 standard library only.
"""

import argparse
import os
import re
import sys
import tempfile
from collections import deque

KEYWORD_ROOTS = ("crate", "super", "self")
ITEM_KEYWORDS = ("fn", "struct", "enum", "trait", "type", "const", "static", "union", "mod")
TOKEN_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*|::|\S")
CFG_TEST_RE = re.compile(r"#\s*\[\s*cfg\s*\(\s*(?:test|all\s*\(\s*test\b[^\]]*\))\s*\)\s*\]")
INNER_CFG_TEST_RE = re.compile(r"#\s*!\s*\[\s*cfg\s*\(\s*test\s*\)\s*\]")


# ---------------------------------------------------------------------------------------------
# Lexing


def strip_comments_and_literals(src):
    """Blank out comments, string and char literals (newlines kept, so line numbers stay)."""
    out = []
    i, n = 0, len(src)

    def blank(s):
        return "".join("\n" if c == "\n" else " " for c in s)

    while i < n:
        c = src[i]
        if c == "/" and src.startswith("//", i):
            j = src.find("\n", i)
            j = n if j < 0 else j
            out.append(blank(src[i:j]))
            i = j
        elif c == "/" and src.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if src.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif src.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append(blank(src[i:j]))
            i = j
        elif c in "rbc" and (i == 0 or not (src[i - 1].isalnum() or src[i - 1] == "_")):
            # Raw strings r"..", r#".."#, br".."; byte/C strings b"..", c"..".
            m = re.match(r'(?:br|cr|r)(#*)"', src[i:i + 300]) if c in "rbc" else None
            if m:
                hashes = m.group(1)
                end = src.find('"' + hashes, i + len(m.group(0)))
                end = n if end < 0 else end + 1 + len(hashes)
                out.append('""' + blank(src[i + 2:end]))
                i = end
            elif c in "bc" and src.startswith('"', i + 1):
                out.append(" ")
                i += 1  # the string itself is handled by the next iteration
            elif c == "b" and src.startswith("'", i + 1):
                out.append(" ")
                i += 1
            else:
                m = re.match(r"[A-Za-z0-9_]+", src[i:])
                out.append(m.group(0))
                i += len(m.group(0))
        elif c == '"':
            j = i + 1
            while j < n and src[j] != '"':
                j += 2 if src[j] == "\\" else 1
            out.append('""' + blank(src[i + 1:j - 1]) if j > i + 1 else '""')
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1f}', '\'') or a lifetime ('a, 'static).
            if i + 1 < n and src[i + 1] == "\\":
                j = i + 2
                while j < n and src[j] != "'":
                    j += 2 if src[j] == "\\" else 1
                out.append("' '" + blank(src[i + 3:j + 1]))
                i = j + 1
            elif i + 2 < n and src[i + 2] == "'":
                out.append("' '")
                i += 3
            else:
                out.append(c)
                i += 1
        elif c.isalnum() or c == "_":
            m = re.match(r"[A-Za-z0-9_]+", src[i:])
            out.append(m.group(0))
            i += len(m.group(0))
        else:
            out.append(c)
            i += 1
    return "".join(out)


def blank_test_items(code):
    """Blank out every item annotated `#[cfg(test)]` (after comments/strings are gone)."""
    while True:
        m = CFG_TEST_RE.search(code)
        if not m:
            return code
        i, n = m.end(), len(code)
        # Further attributes on the same item.
        while True:
            while i < n and code[i].isspace():
                i += 1
            if code.startswith("#", i):
                j = code.find("[", i)
                depth = 0
                while j < n:
                    depth += {"[": 1, "]": -1}.get(code[j], 0)
                    j += 1
                    if depth == 0:
                        break
                i = j
            else:
                break
        # The item: up to `;` or through its `{ ... }` block.
        depth = 0
        while i < n:
            ch = code[i]
            if ch in "([":
                depth += 1
            elif ch in ")]":
                depth -= 1
            elif ch == ";" and depth == 0:
                i += 1
                break
            elif ch == "{" and depth == 0:
                braces = 0
                while i < n:
                    braces += {"{": 1, "}": -1}.get(code[i], 0)
                    i += 1
                    if braces == 0:
                        break
                break
            i += 1
        code = code[:m.start()] + "".join("\n" if c == "\n" else " " for c in code[m.start():i]) + code[i:]


def tokenize(code):
    """(text, line) tokens; `$crate` becomes `crate`."""
    toks = []
    line, last = 1, 0
    for m in TOKEN_RE.finditer(code):
        line += code.count("\n", last, m.start())
        last = m.start()
        toks.append((m.group(0), line))
    out = []
    for k, t in enumerate(toks):
        if t[0] == "$" and k + 1 < len(toks) and toks[k + 1][0] == "crate":
            continue
        out.append(t)
    return out


def is_ident(t):
    return t[0].isalpha() or t[0] == "_"


# ---------------------------------------------------------------------------------------------
# Parsing one file


class FileInfo:
    """What one source file declares, imports and references."""

    def __init__(self, path, module):
        self.path = path  # relative to the crate root, e.g. src/http/router.rs
        self.module = module  # tuple of segments from the crate root
        self.children = []  # `mod x;` declarations (file modules)
        self.defined = set()  # names of top-level items (incl. inline modules)
        self.uses = []  # (abs_path or None, bound name or '*', line, is_pub, text)
        self.aliases = {}  # bound name -> abs path (crate-internal) or None (external)
        self.globs = []  # abs paths of crate-internal glob imports
        self.inline = []  # (raw segments, line)
        self.idents = set()  # identifiers used outside `use` items
        self.test_only = False

    @property
    def is_mod_file(self):
        base = os.path.basename(self.path)
        return base in ("mod.rs", "lib.rs", "main.rs") or self.path.startswith("src/bin/")


def parse_use_tree(toks, i, prefix, out):
    """Parse a use tree starting at toks[i]; append (segments, bound name) to out. Returns
    the index after the tree."""
    segs = list(prefix)
    while i < len(toks):
        t = toks[i][0]
        if t == "::":
            i += 1
        elif t == "{":
            i += 1
            while i < len(toks) and toks[i][0] != "}":
                i = parse_use_tree(toks, i, segs, out)
                if i < len(toks) and toks[i][0] == ",":
                    i += 1
            return i + 1
        elif t == "*":
            out.append((segs, "*"))
            return i + 1
        elif is_ident(t):
            segs.append(t)
            i += 1
            if i < len(toks) and toks[i][0] == "as":
                out.append((segs, toks[i + 1][0]))
                return i + 2
            if i >= len(toks) or toks[i][0] != "::":
                if t == "self":  # `a::b::{self}` binds `b`
                    segs = segs[:-1]
                    out.append((segs, segs[-1] if segs else "self"))
                else:
                    out.append((segs, t))
                return i
        else:
            return i
    return i


def parse_file(path, rel, module):
    with open(path, encoding="utf-8") as f:
        src = f.read()
    info = FileInfo(rel, module)
    code = strip_comments_and_literals(src)
    if INNER_CFG_TEST_RE.search(code):
        info.test_only = True
        return info
    code = blank_test_items(code)
    # `pub(in crate::a)` is a visibility, not a dependency.
    code = re.sub(r"\bpub\s*\(\s*in\s+[^)]*\)", lambda m: " " * len(m.group(0)), code)
    toks = tokenize(code)
    depth = 0
    i, n = 0, len(toks)
    raw_uses = []
    while i < n:
        t, line = toks[i]
        if t == "{":
            depth += 1
        elif t == "}":
            depth -= 1
        elif t == "use" and (i == 0 or toks[i - 1][0] != "::"):
            is_pub = i > 0 and (toks[i - 1][0] == "pub" or (toks[i - 1][0] == ")" and _pub_paren(toks, i - 1)))
            tree = []
            j = parse_use_tree(toks, i + 1, [], tree)
            while j < n and toks[j][0] != ";":
                j += 1
            text = " ".join(x[0] for x in toks[i:j])
            for a, b in ((" :: ", "::"), ("{ ", "{"), (" }", "}"), (" ,", ",")):
                text = text.replace(a, b)
            for segs, bound in tree:
                raw_uses.append((segs, bound, line, is_pub, text))
            i = j + 1
            continue
        elif t == "macro_rules" and i + 2 < n and toks[i + 1][0] == "!" and depth == 0:
            info.defined.add(toks[i + 2][0])
        elif t in ITEM_KEYWORDS and i + 1 < n and (i == 0 or toks[i - 1][0] != "::"):
            nxt = toks[i + 1][0]
            if t == "const" and nxt in ("fn", "unsafe", "async", "extern"):
                pass
            elif is_ident(nxt) and nxt not in ("mut", "_") and depth == 0:
                name = nxt
                if t == "static" and nxt == "mut":
                    name = toks[i + 2][0]
                if t == "mod" and i + 2 < n and toks[i + 2][0] == ";":
                    info.children.append(name)
                    i += 3
                    continue
                info.defined.add(name)
        if is_ident(t):
            info.idents.add(t)
        i += 1
    info._raw_uses = raw_uses
    info._toks = toks
    return info


def _pub_paren(toks, close):
    """Whether toks[close] (a `)`) ends `pub(...)`."""
    j = close
    while j >= 0 and toks[j][0] != "(":
        j -= 1
    return j > 0 and toks[j - 1][0] == "pub"


# ---------------------------------------------------------------------------------------------
# The crate


class Crate:
    def __init__(self, root):
        self.root = root
        self.files = {}  # rel path -> FileInfo
        self.modules = {}  # (crate root rel, module tuple) -> rel path
        self.warnings = []
        roots = [r for r in ("src/lib.rs", "src/main.rs") if os.path.exists(os.path.join(root, r))]
        bindir = os.path.join(root, "src", "bin")
        if os.path.isdir(bindir):
            roots += sorted("src/bin/" + f for f in os.listdir(bindir) if f.endswith(".rs"))
        for r in roots:
            self._load(r, r, ())
        seen = set(self.files)
        for dirpath, _, names in os.walk(os.path.join(root, "src")):
            for name in names:
                rel = os.path.relpath(os.path.join(dirpath, name), root).replace(os.sep, "/")
                if name.endswith(".rs") and rel not in seen and not rel.startswith("src/bin/"):
                    self.warnings.append(f"{rel}: not reached by any `mod` declaration (not compiled?)")
        for info in self.files.values():
            self._resolve_uses(info)

    def _load(self, crate_root, rel, module):
        info = parse_file(os.path.join(self.root, rel), rel, module)
        info.crate_root = crate_root
        self.files[rel] = info
        self.modules[(crate_root, module)] = rel
        if info.test_only:
            return
        d = os.path.dirname(rel)
        if not info.is_mod_file:
            d = os.path.join(d, os.path.splitext(os.path.basename(rel))[0])
        for child in info.children:
            for cand in (f"{d}/{child}.rs", f"{d}/{child}/mod.rs"):
                if os.path.exists(os.path.join(self.root, cand)):
                    self._load(crate_root, cand, module + (child,))
                    break
            else:
                self.warnings.append(f"{rel}: `mod {child};` has no file")

    def module_file(self, info, module):
        return self.modules.get((info.crate_root, tuple(module)))

    def absolute(self, info, segs):
        """Crate-absolute segments for a path written in `info`, or None if external."""
        if not segs:
            return None
        head = segs[0]
        if head == "crate":
            return list(segs[1:])
        if head == "self":
            return list(info.module) + list(segs[1:])
        if head == "super":
            base = list(info.module)
            k = 0
            while k < len(segs) and segs[k] == "super":
                if not base:
                    return None
                base.pop()
                k += 1
            return base + list(segs[k:])
        if head in info.children:
            return list(info.module) + list(segs)
        if head in info.aliases:
            target = info.aliases[head]
            return None if target is None else list(target) + list(segs[1:])
        return None

    def _resolve_uses(self, info):
        if info.test_only:
            return
        # First the names imported from outside the crate, so `use model::X` after
        # `use pinion_xds::model` is not mistaken for a crate path.
        for segs, bound, line, is_pub, text in info._raw_uses:
            if segs and segs[0] not in KEYWORD_ROOTS and segs[0] not in info.children and bound != "*":
                info.aliases.setdefault(bound, None)
        for _ in range(3):  # uses may build on each other (`use crate::a; use a::b;`)
            for segs, bound, line, is_pub, text in info._raw_uses:
                if bound == "*":
                    continue
                if segs and segs[0] not in KEYWORD_ROOTS and segs[0] not in info.children:
                    if segs[0] in info.aliases and info.aliases[segs[0]] is not None and len(segs) > 1:
                        info.aliases[bound] = info.aliases[segs[0]] + segs[1:]
                    continue
                absp = self.absolute(info, segs)
                if absp is not None:
                    info.aliases[bound] = absp
        for segs, bound, line, is_pub, text in info._raw_uses:
            absp = self.absolute(info, segs)
            info.uses.append((absp, bound, line, is_pub, text))
            if bound == "*" and absp is not None:
                info.globs.append(absp)

    def lookup(self, info, name, depth):
        """Where `name`, as seen inside `info`'s module, is defined: (file, certain) or None
        if it is external."""
        if name in info.defined:
            return info.path, True
        if name in info.aliases:
            target = info.aliases[name]
            if target is None:
                return None
            r = self.resolve(info, target, depth + 1)
            return (r[0], r[2]) if r else None
        for g in info.globs:
            r = self.resolve(info, g + [name], depth + 1)
            if r and r[2]:
                return r[0], True
        return info.path, False

    def resolve(self, info, absp, depth=0):
        """The file a crate-absolute path names: (file, kind, certain), kind being `module`
        (the path names a module) or `item`; None if it leads outside the crate."""
        if depth > 30:
            return None
        module = []
        for k, seg in enumerate(absp):
            if self.module_file(info, module + [seg]) is not None:
                module.append(seg)
                continue
            f = self.files[self.module_file(info, module)]
            hit = self.lookup(f, seg, depth)
            if hit is None:
                return None
            return hit[0], "item", hit[1]
        return self.module_file(info, module), "module", True

    def is_facade(self, rel):
        """A file that only declares submodules and re-exports: naming it is no dependency."""
        return not self.files[rel].defined

    def edges(self):
        """{(from, to): [(line, evidence)]}"""
        out = {}

        def add(info, target, line, text):
            if target and target != info.path:
                ev = out.setdefault((info.path, target), [])
                if (line, text) not in ev:
                    ev.append((line, text))

        def add_resolved(info, absp, line, text):
            r = self.resolve(info, absp)
            if r is None:
                return
            target, kind, _ = r
            if kind == "module" and self.is_facade(target):
                return
            add(info, target, line, text)

        for info in self.files.values():
            if info.test_only:
                continue
            for absp, bound, line, is_pub, text in info.uses:
                if absp is None:
                    continue
                if is_pub and bound != "*" and bound not in info.idents:
                    continue  # a pure re-export: the users resolve through it
                if bound == "*":
                    mod_file = self.module_file(info, absp)
                    if mod_file is None:
                        add_resolved(info, absp, line, text)
                        continue
                    if not self.is_facade(mod_file):
                        add(info, mod_file, line, text)
                    for a2, b2, _, p2, _ in self.files[mod_file].uses:
                        if p2 and a2 is not None and b2 != "*":
                            add_resolved(self.files[mod_file], a2, line, text)
                    continue
                add_resolved(info, absp, line, text)
            toks = info._toks
            k, n = 0, len(toks)
            in_use = False
            while k < n:
                t = toks[k][0]
                if t == "use" and (k == 0 or toks[k - 1][0] != "::"):
                    in_use = True
                elif t == ";":
                    in_use = False
                if in_use or not is_ident(t) or (k > 0 and toks[k - 1][0] in ("::", ".")):
                    k += 1
                    continue
                segs = [t]
                j = k + 1
                while j + 1 < n and toks[j][0] == "::" and is_ident(toks[j + 1][0]):
                    segs.append(toks[j + 1][0])
                    j += 2
                if len(segs) > 1 and (t in KEYWORD_ROOTS or t in info.children or info.aliases.get(t)):
                    absp = self.absolute(info, segs)
                    if absp is not None:
                        add_resolved(info, absp, toks[k][1], "::".join(segs))
                k = j
        return out


# ---------------------------------------------------------------------------------------------
# Graph


def sccs(nodes, adj):
    """Tarjan's strongly connected components (iterative)."""
    index, low, on, stack, out = {}, {}, set(), [], []
    counter = [0]
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(adj.get(root, ()))))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            advanced = False
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(adj.get(w, ())))))
                    advanced = True
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                comp = []
                while True:
                    w = stack.pop()
                    on.discard(w)
                    comp.append(w)
                    if w == v:
                        break
                out.append(sorted(comp))
    return out


def shortest_path(adj, src, dst, allowed):
    prev = {src: None}
    q = deque([src])
    while q:
        v = q.popleft()
        if v == dst:
            path = []
            while v is not None:
                path.append(v)
                v = prev[v]
            return path[::-1]
        for w in sorted(adj.get(v, ())):
            if w in allowed and w not in prev:
                prev[w] = v
                q.append(w)
    return None


def cycles_in(comp, adj):
    """One shortest cycle through each edge inside the component, without repeats."""
    members = set(comp)
    found, seen = [], set()
    for u in comp:
        for v in sorted(adj.get(u, ())):
            if v not in members:
                continue
            back = shortest_path(adj, v, u, members)
            cyc = [u] + back  # u -> v ... -> u
            body = cyc[:-1]
            r = body.index(min(body))
            key = tuple(body[r:] + body[:r])
            if key not in seen:
                seen.add(key)
                found.append(list(key) + [key[0]])
    return sorted(found, key=lambda c: (len(c), c))


def analyze(root):
    crate = Crate(root)
    edges = crate.edges()
    adj = {}
    for (a, b) in edges:
        adj.setdefault(a, set()).add(b)
    nodes = sorted(f for f, i in crate.files.items() if not i.test_only)
    groups = [c for c in sccs(nodes, adj) if len(c) > 1]
    groups.sort(key=lambda c: (-len(c), c))
    return crate, edges, adj, groups


def load_allowlist(path):
    """Allowed cycle groups: one per line, file paths separated by spaces; `#` comments."""
    allowed = []
    if not path or not os.path.exists(path):
        return allowed
    with open(path, encoding="utf-8") as f:
        for raw in f:
            line = raw.split("#", 1)[0].strip()
            if line:
                allowed.append(frozenset(line.split()))
    return allowed


def report(root, allow_path, strict, show_edges, out=sys.stdout):
    """Print the analysis; returns the exit status."""
    crate, edges, adj, groups = analyze(root)
    allowed = [] if strict else load_allowlist(allow_path)
    for w in crate.warnings:
        print(f"warning: {w}", file=out)
    files = [f for f, i in crate.files.items() if not i.test_only]
    print(f"{len(files)} files, {len(edges)} file dependencies", file=out)
    if show_edges:
        for (a, b), ev in sorted(edges.items()):
            lines = ", ".join(f"{ln}: {txt}" for ln, txt in ev[:3])
            print(f"  {a} -> {b}    ({lines})", file=out)
    failing = 0
    used = set()
    for gi, comp in enumerate(groups, 1):
        cover = next((a for a in allowed if set(comp) <= a), None)
        if cover is None:
            status = "NOT ALLOWED"
            failing += 1
        elif set(comp) == cover:
            status = "allowlisted"
            used.add(cover)
        else:
            status = "NOT ALLOWED: smaller than its allowlist entry"
            failing += 1
            used.add(cover)
        print(f"\ncycle group {gi} [{status}]: {len(comp)} files: {' '.join(comp)}", file=out)
        for cyc in cycles_in(comp, adj):
            print("  cycle: " + " -> ".join(cyc), file=out)
            for a, b in zip(cyc, cyc[1:]):
                ln, txt = edges[(a, b)][0]
                print(f"      {a}:{ln}: {txt}  => {b}", file=out)
        if cover is not None and set(comp) != cover:
            print(f"  the cycle got smaller ({' '.join(sorted(cover - set(comp)))} no longer in it): narrow its"
                  " line in the allowlist to the files above", file=out)
    for a in allowed:
        if a not in used:
            failing += 1
            print(f"\nstale allowlist entry, the cycle is gone (delete the line): {' '.join(sorted(a))}", file=out)
    if not groups:
        print("no cycles", file=out)
    if failing:
        print(f"\nFAILED: {failing} problem(s) above", file=out)
    elif groups:
        print(f"\nOK: only the {len(groups)} allowlisted cycle group(s)", file=out)
    return 1 if failing else 0


# ---------------------------------------------------------------------------------------------
# Self-test


SYNTHETIC = {
    # A facade lib.rs; the cycle a -> b (re-exported from net/mod.rs) -> c (inline path) -> a.
    "src/lib.rs": "pub mod a;\npub mod c;\npub mod net;\npub mod clean;\n",
    "src/a.rs": (
        "//! Docs naming crate::clean::Nothing do not count.\n"
        "use crate::net::B;\n"
        "pub struct A;\n"
        "pub fn f() -> B { let _s = \"crate::clean::g()\"; let _c = '\"'; B }\n"
        "#[cfg(test)]\nmod tests {\n    use crate::clean::g;\n    use super::*;\n}\n"
    ),
    "src/net/mod.rs": "pub mod b;\npub mod helper;\npub use b::B;\n",
    "src/net/b.rs": "pub struct B;\nimpl B { pub fn go(&self) { crate::c::run(); super::helper::h(); } }\n",
    "src/net/helper.rs": "pub fn h() {}\n",
    "src/c.rs": (
        "use crate::net;\n"
        "pub fn run() { let _ = crate::a::A; }\n"
        "pub fn other() { net::helper::h(); }\n"
        "#[cfg(test)] use crate::clean::g as _g;\n"
    ),
    # Test-only imports and a parent facade: no cycle through `clean`.
    "src/clean/mod.rs": "mod inner;\npub use inner::{g, Nothing};\n",
    "src/clean/inner.rs": (
        "pub struct Nothing;\n/* crate::a::f() */\npub fn g() { let _ = r#\"crate::a::A\"#; }\n"
        "#[cfg(test)]\nmod tests { use crate::a::A; }\n"
    ),
}


def write_crate(base, files):
    for rel, text in files.items():
        p = os.path.join(base, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        with open(p, "w", encoding="utf-8") as f:
            f.write(text)


def self_test():
    failures = []

    def check(cond, what):
        if not cond:
            failures.append(what)

    with tempfile.TemporaryDirectory() as d:
        write_crate(d, SYNTHETIC)
        crate, edges, adj, groups = analyze(d)
        check(groups == [["src/a.rs", "src/c.rs", "src/net/b.rs"]], f"cycle group: {groups}")
        check(("src/a.rs", "src/net/b.rs") in edges, "re-export resolved to the defining file")
        check(("src/a.rs", "src/net/mod.rs") not in edges, "no edge to a facade mod.rs")
        check(("src/net/b.rs", "src/c.rs") in edges, "inline crate:: path")
        check(("src/net/b.rs", "src/net/helper.rs") in edges, "inline super:: path")
        check(("src/c.rs", "src/net/helper.rs") in edges, "inline path through a use alias")
        check(("src/c.rs", "src/a.rs") in edges, "inline crate:: path to an item")
        check(not any(b.startswith("src/clean/") for (a, b) in edges if a != "src/clean/mod.rs"),
              f"cfg(test), comments and strings ignored: {sorted(edges)}")
        check(not any(a.startswith("src/clean/") for (a, b) in edges), "pure re-exports are no edges")
        cycles = cycles_in(groups[0], adj) if groups else []
        check(["src/a.rs", "src/net/b.rs", "src/c.rs", "src/a.rs"] in cycles, f"concrete cycle: {cycles}")
        with open(os.devnull, "w") as null:
            check(report(d, None, False, False, null) == 1, "exit status 1 on a cycle")
            allow = os.path.join(d, "allow.txt")
            with open(allow, "w") as f:
                f.write("# known\nsrc/a.rs src/c.rs src/net/b.rs  # why\n")
            check(report(d, allow, False, False, null) == 0, "an allowlisted cycle passes")
            check(report(d, allow, True, False, null) == 1, "--strict ignores the allowlist")
            with open(allow, "w") as f:
                f.write("src/a.rs src/c.rs src/net/b.rs src/net/helper.rs\n")
            check(report(d, allow, False, False, null) == 1, "an allowlist entry wider than the cycle fails")
            with open(allow, "w") as f:
                f.write("src/a.rs src/c.rs src/net/b.rs\nsrc/clean/mod.rs src/clean/inner.rs\n")
            check(report(d, allow, False, False, null) == 1, "a stale allowlist entry fails")
        # Break the cycle: c no longer names a.
        write_crate(d, {"src/c.rs": "pub fn run() {}\n"})
        crate, edges, adj, groups = analyze(d)
        check(groups == [], f"no cycle after the fix: {groups}")
        with open(os.devnull, "w") as null:
            check(report(d, None, False, False, null) == 0, "exit status 0 without cycles")
    # A two-file cycle through `super::` and a child module path, and a private use re-export
    # reached through `super::` (a child may name what its parent imports).
    with tempfile.TemporaryDirectory() as d:
        write_crate(d, {
            "src/lib.rs": "mod p;\nmod q;\n",
            "src/p/mod.rs": "mod k;\nuse crate::q::Q;\npub fn top() { k::leaf(); }\n",
            "src/p/k.rs": "pub fn leaf() { let _ = super::Q; }\n",
            "src/q.rs": "pub struct Q;\npub fn up() { crate::p::top(); }\n",
        })
        crate, edges, adj, groups = analyze(d)
        check(("src/p/k.rs", "src/q.rs") in edges, f"super:: through a parent's use: {sorted(edges)}")
        check(("src/p/mod.rs", "src/p/k.rs") in edges, "a mod.rs calling its child module")
        # p/mod.rs -> k (k::leaf) -> q (super::Q is q's) -> p/mod.rs (crate::p::top).
        check(groups == [["src/p/k.rs", "src/p/mod.rs", "src/q.rs"]], f"mod.rs, child and q: {groups}")
    if failures:
        for f in failures:
            print(f"self-test FAILED: {f}")
        return 1
    print("self-test passed")
    return 0


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default=os.path.dirname(here), help="crate directory (default: the repository)")
    ap.add_argument("--allow", default=os.path.join(here, "module_cycles_allow.txt"), help="allowlist file")
    ap.add_argument("--strict", action="store_true", help="fail on allowlisted cycles too")
    ap.add_argument("--edges", action="store_true", help="print every file dependency")
    ap.add_argument("--self-test", action="store_true", help="test the checker on synthetic crates")
    args = ap.parse_args()
    if args.self_test:
        return self_test()
    return report(args.root, args.allow, args.strict, args.edges)


if __name__ == "__main__":
    sys.exit(main())
