#!/usr/bin/env python3
"""Parses nginx config files with crossplane (one at a time, includes not followed) and prints,
as JSON, each file's directives flattened in document order as [depth, name, args, line] and
the server_name arguments of every `server` block. The reference side of tests/nginx_crossplane.rs.
Usage: crossplane_dump.py FILE...
"""
import json
import sys

import crossplane


def flatten(block, depth, out, servers):
    for d in block:
        out.append([depth, d["directive"], d.get("args", []), d["line"]])
        if d["directive"] == "server" and "block" in d:
            names = []
            for c in d["block"]:
                if c["directive"] == "server_name":
                    names.extend(c.get("args", []))
            servers.append(names)
        if "block" in d:
            flatten(d["block"], depth + 1, out, servers)


result = {}
for path in sys.argv[1:]:
    payload = crossplane.parse(path, single=True, check_ctx=False, check_args=False, catch_errors=True)
    cfg = payload["config"][0]
    entry = {"ok": cfg["status"] == "ok", "errors": [e["error"] for e in cfg["errors"]], "directives": [], "servers": []}
    flatten(cfg["parsed"], 0, entry["directives"], entry["servers"])
    result[path] = entry
json.dump(result, sys.stdout)
