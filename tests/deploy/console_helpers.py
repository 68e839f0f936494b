"""Helpers for the console tests: a tiny HTTP client that keeps cookies and does not follow redirects (so tests
see exactly what the server answered). The console itself is served by :class:`bench.browser.ServedApp`."""
from __future__ import annotations

import http.client
import json
import re
from http.cookies import SimpleCookie
from typing import Any
from urllib.parse import urlencode


class Client:
    def __init__(self, port: int) -> None:
        self.port = port
        self.cookies: dict[str, str] = {}
        self.raw_cookies: list[str] = []

    def request(self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
                ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        h = dict(headers or {})
        if self.cookies:
            h["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        conn.request(method, path, body=body, headers=h)
        r = conn.getresponse()
        data = r.read()
        for v in r.headers.get_all("set-cookie") or []:
            self.raw_cookies.append(v)
            c = SimpleCookie()
            c.load(v)
            for k, morsel in c.items():
                if morsel.value and morsel["max-age"] != "0" and "1970" not in morsel["expires"]:
                    self.cookies[k] = morsel.value
                else:
                    self.cookies.pop(k, None)
        conn.close()
        return r.status, {k.lower(): v for k, v in r.headers.items()}, data

    def get(self, path: str) -> tuple[int, dict[str, str], bytes]:
        return self.request("GET", path)

    def form(self, path: str, fields: dict[str, str], headers: dict[str, str] | None = None
             ) -> tuple[int, dict[str, str], bytes]:
        return self.request("POST", path, urlencode(fields).encode(),
                            {"Content-Type": "application/x-www-form-urlencoded", **(headers or {})})

    def post_json(self, path: str, obj: Any, csrf: str | None = None, headers: dict[str, str] | None = None
                  ) -> tuple[int, Any]:
        h = {"Content-Type": "application/json", **(headers or {})}
        if csrf is not None:
            h["X-CSRF-Token"] = csrf
        code, _, data = self.request("POST", path, json.dumps(obj).encode(), h)
        try:
            return code, json.loads(data)
        except ValueError:
            return code, data

    def login(self, user: str, password: str) -> int:
        code, _, page = self.get("/login")
        token = re.search(rb'name="csrf_token" value="([^"]+)"', page).group(1).decode()
        code, headers, _ = self.form("/login", {"user": user, "password": password, "csrf_token": token, "next": "/fleet"})
        return code if headers.get("location") != "/fleet" else 200

    def csrf(self, path: str = "/fleet") -> str:
        _, _, page = self.get(path)
        return re.search(rb'<meta name="csrf-token" content="([^"]+)">', page).group(1).decode()
