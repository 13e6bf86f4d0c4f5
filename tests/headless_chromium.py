"""A headless Chromium driven over the Chrome DevTools Protocol, with only the standard library.

Test machinery, no tests. :class:`Chromium` starts Debian's ``chromium`` with a fresh profile and
``--remote-debugging-port=0``, connects a minimal WebSocket client (RFC 6455: masked client
frames, unmasked server frames) to the page target and sends CDP commands; every event it
receives is kept in :attr:`Chromium.events`, so console errors and exceptions can be checked.
"""

import base64
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import time
import urllib.request

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--force-device-scale-factor=1", "--hide-scrollbars")


def find_chromium():
    """The chromium executable on PATH, or None."""
    return shutil.which("chromium") or shutil.which("chromium-browser")


class Chromium:
    """Context manager: ``with Chromium(width, height) as browser: browser.navigate(url)``."""

    def __init__(self, width=1200, height=900, timeout=30.0):
        self.width, self.height, self.timeout = width, height, timeout
        self.events = []
        self._next_id = 0

    def __enter__(self):
        self.profile = tempfile.mkdtemp(prefix="tf_dtd_chromium_")
        command = [find_chromium(), *FLAGS, f"--user-data-dir={self.profile}",
                   f"--window-size={self.width},{self.height}", "--remote-debugging-port=0",
                   "about:blank"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        try:
            port = self._wait_for_port()
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                targets = json.load(r)
            page = next(t for t in targets if t["type"] == "page")
            self._connect(page["webSocketDebuggerUrl"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")
        return self

    def __exit__(self, *exc):
        if getattr(self, "sock", None) is not None:
            self.sock.close()
        self.process.kill()
        self.process.wait(timeout=30)
        shutil.rmtree(self.profile, ignore_errors=True)

    # --- CDP ---

    def send(self, method, **params):
        """Send one command and return its result (events on the way go to ``events``)."""
        self._next_id += 1
        message_id = self._next_id
        self._send_frame(json.dumps({"id": message_id, "method": method, "params": params}))
        while True:
            message = json.loads(self._receive_message())
            if message.get("id") == message_id:
                if "error" in message:
                    raise RuntimeError(f"{method} failed: {message['error']}")
                return message["result"]
            self.events.append(message)

    def wait_for_event(self, method):
        """Read messages until the event ``method`` arrives; return its params."""
        for event in self.events:
            if event.get("method") == method:
                self.events.remove(event)
                return event["params"]
        while True:
            message = json.loads(self._receive_message())
            if message.get("method") == method:
                return message["params"]
            self.events.append(message)

    def navigate(self, url):
        self.send("Page.navigate", url=url)
        self.wait_for_event("Page.loadEventFired")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (JSON-serialisable)."""
        result = self.send("Runtime.evaluate", expression=expression, returnByValue=True,
                           awaitPromise=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression!r} raised {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, x, y):
        """A left mouse click at page coordinates ``(x, y)``."""
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left",
                      clickCount=1)

    def screenshot(self):
        """PNG bytes of the viewport."""
        return base64.b64decode(self.send("Page.captureScreenshot", format="png")["data"])

    def problems(self):
        """Console errors and warnings, uncaught exceptions and error log entries so far."""
        found = []
        for event in self.events:
            method, params = event.get("method"), event.get("params", {})
            if method == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                found.append(details.get("exception", {}).get("description") or details["text"])
            elif method == "Runtime.consoleAPICalled" and params["type"] in ("error", "warning",
                                                                              "assert"):
                found.append(" ".join(str(a.get("value", a.get("description")))
                                      for a in params["args"]))
            elif method == "Log.entryAdded" and params["entry"]["level"] in ("error", "warning"):
                found.append(params["entry"]["text"])
        return found

    # --- WebSocket ---

    def _wait_for_port(self):
        path = os.path.join(self.profile, "DevToolsActivePort")
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"chromium exited with status {self.process.returncode}")
            if os.path.exists(path):
                with open(path) as stream:
                    first = stream.readline().strip()
                if first.isdigit():
                    return int(first)
            time.sleep(0.05)
        raise TimeoutError(f"chromium did not open its DevTools port in {self.timeout} s")

    def _connect(self, url):
        host_port, path = url[len("ws://"):].split("/", 1)
        host, port = host_port.split(":")
        self.sock = socket.create_connection((host, int(port)), timeout=self.timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET /{path} HTTP/1.1\r\nHost: {host_port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                           "Sec-WebSocket-Version: 13\r\n\r\n").encode())
        response = b""
        while b"\r\n\r\n" not in response:
            response += self.sock.recv(4096)
        if b" 101 " not in response.split(b"\r\n", 1)[0]:
            raise RuntimeError(f"WebSocket handshake failed: {response[:200]!r}")
        self._buffer = response.split(b"\r\n\r\n", 1)[1]

    def _send_frame(self, text, opcode=0x1):
        payload = text.encode() if isinstance(text, str) else text
        header = bytes([0x80 | opcode])
        size = len(payload)
        if size < 126:
            header += bytes([0x80 | size])
        elif size < 1 << 16:
            header += bytes([0x80 | 126]) + struct.pack(">H", size)
        else:
            header += bytes([0x80 | 127]) + struct.pack(">Q", size)
        mask = os.urandom(4)
        masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
        self.sock.sendall(header + mask + masked)

    def _read(self, count):
        while len(self._buffer) < count:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError("chromium closed the DevTools connection")
            self._buffer += chunk
        data, self._buffer = self._buffer[:count], self._buffer[count:]
        return data

    def _receive_message(self):
        parts = []
        while True:
            first, second = self._read(2)
            opcode, size = first & 0x0F, second & 0x7F
            if size == 126:
                size = struct.unpack(">H", self._read(2))[0]
            elif size == 127:
                size = struct.unpack(">Q", self._read(8))[0]
            mask = self._read(4) if second & 0x80 else None
            payload = self._read(size)
            if mask:
                payload = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
            if opcode == 0x8:
                raise ConnectionError("chromium closed the DevTools connection")
            if opcode == 0x9:
                self._send_frame(payload, opcode=0xA)
                continue
            parts.append(payload)
            if first & 0x80:
                return b"".join(parts).decode()
