"""Every shell command of docs/operations.md really works.

The test reads the ```sh blocks of the guide, starts a real nerve with the config the
guide gives for its examples (the ```yaml block after the `operations-doc-test: config`
marker), publishes a few events, and runs each command with bash (pipefail) in the node's
working directory, with:

- the built `nerve` first on PATH and NERVE_SERVER pointing at the node;
- DLQ_ID, EVENT_ID and REPLAY_ID set from the API just before a command that uses them
  (a DLQ entry of the `drill` agent, an event of orders.created, the newest replay), as
  the guide tells a reader to set them;
- ./nerve-data the node's data directory and ./nerve.log its stderr so far.

A command passes when it exits 0, or N when its comment starts with `exits N`. A comment
starting with `not run by the test: REASON` skips it (starting a second server, signals); the test
counts those and keeps them few. Lines starting with `#` are comments, a trailing `\\`
continues a command, and `$ ` prompts are not used.
"""

import os
import re
import subprocess
import time
import unittest

from harness import ServerTestCase, clean_env, nerve_bin

DOCS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "docs")
GUIDE = os.path.join(DOCS, "operations.md")
ALERTS = os.path.join(DOCS, "prometheus", "nerve-alerts.yml")
CONFIG_MARKER = "operations-doc-test: config"
EXITS_RE = re.compile(r"^exits (\d+)\b")
SKIP_RE = re.compile(r"^not run by the test: (.+)$")
SKIPS_MAX = 6
COMMAND_TIMEOUT_S = 90


def strip_comment(line):
    """(command, comment): the comment starts at a `#` after whitespace, outside quotes."""
    quote = None
    for i, c in enumerate(line):
        if quote:
            if c == quote:
                quote = None
        elif c in "'\"":
            quote = c
        elif c == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip(), line[i + 1:].strip()
    return line.rstrip(), ""


def sh_commands(text):
    """[(line number, command, expected exit code, skip reason or None)] of the guide."""
    out = []
    in_sh = False
    pending = None  # (line number, text so far) of a command continued with `\`
    for n, line in enumerate(text.splitlines(), 1):
        stripped = line.strip()
        if stripped.startswith("```"):
            in_sh = stripped == "```sh"
            assert pending is None, f"line {n}: a ```sh block ends inside a command"
            continue
        if not in_sh:
            continue
        if pending is None and (not stripped or stripped.startswith("#")):
            continue
        if stripped.endswith("\\"):
            pending = (pending or (n, ""))
            pending = (pending[0], pending[1] + stripped[:-1] + " ")
            continue
        if pending is not None:
            start, stripped = pending[0], pending[1] + stripped
            pending = None
        else:
            start = n
        command, comment = strip_comment(stripped)
        exits = EXITS_RE.search(comment)
        skip = SKIP_RE.search(comment)
        out.append((start, command, int(exits.group(1)) if exits else 0,
                    skip.group(1).strip() if skip else None))
    return out


def guide_config(text):
    """The ```yaml block after the config marker."""
    at = text.index(CONFIG_MARKER)
    start = text.index("```yaml\n", at) + len("```yaml\n")
    return text[start:text.index("```", start)]


def slug(heading):
    """GitHub's anchor for a heading."""
    s = heading.strip().lower()
    s = re.sub(r"[^a-z0-9 _-]", "", s)
    return s.replace(" ", "-")


class OperationsGuideTest(ServerTestCase):

    @classmethod
    def setUpClass(cls):
        with open(GUIDE) as f:
            cls.text = f.read()
        cls.commands = sh_commands(cls.text)

    def setUp(self):
        self.srv = self.new_server(start=False, config=guide_config(self.text))
        self.srv.data_dir = os.path.join(self.srv.workdir, "nerve-data")
        self.srv.start()
        r = self.srv.publish("orders.created",
                             [{"id": f"order-{i}-created", "key": f"customer-{i % 3}",
                               "data": {"total": i}} for i in range(6)])
        self.assertEqual(r.status, 201, r)
        self.wait_for(lambda: self.dlq_ids(), what="an entry in the DLQ")
        self.bin_dir = os.path.dirname(nerve_bin())

    # -- placeholders ---------------------------------------------------------------

    def api(self, method, path, body=None):
        r = self.srv.request(method, path, body)
        self.assertLess(r.status, 300, f"{method} {path}: {r}")
        return r.json()

    def dlq_ids(self):
        return [e["id"] for e in self.api("GET", "/v1/dlq?agent=drill&limit=10")["entries"]]

    def dlq_id(self):
        """A DLQ entry of `drill`; publishes a new event when a purge emptied the DLQ."""
        if not self.dlq_ids():
            self.srv.publish("orders.created", {"data": {"total": 0}})
        return self.wait_for(lambda: (self.dlq_ids() or [None])[0], what="a DLQ entry")

    def replay_id(self):
        replays = self.api("GET", "/v1/replays")["replays"]
        if replays:
            return replays[-1]["id"]
        return self.api("POST", "/v1/replays",
                        {"from": "-1h", "to": "now", "mode": "dry-run"})["id"]

    def env_for(self, command):
        env = {"PATH": self.bin_dir + os.pathsep + os.environ.get("PATH", ""),
               "NERVE_SERVER": self.srv.url}
        if "DLQ_ID" in command:
            env["DLQ_ID"] = self.dlq_id()
        if "EVENT_ID" in command:
            env["EVENT_ID"] = "order-1-created"
        if "REPLAY_ID" in command:
            env["REPLAY_ID"] = self.replay_id()
        return clean_env(env)

    # -- running ----------------------------------------------------------------------

    def run_command(self, line, command, expected):
        with open(os.path.join(self.srv.workdir, "nerve.log"), "w") as f:
            f.write(self.srv.stderr_text() + "\n")
        started = time.monotonic()
        p = subprocess.run(["bash", "-o", "pipefail", "-c", command], cwd=self.srv.workdir,
                           env=self.env_for(command), stdin=subprocess.DEVNULL,
                           capture_output=True, timeout=COMMAND_TIMEOUT_S)
        took = time.monotonic() - started
        out = p.stdout.decode("utf-8", "replace")
        err = p.stderr.decode("utf-8", "replace")
        print(f"operations.md:{line}: exit {p.returncode} in {took:.1f} s: {command}", flush=True)
        self.assertEqual(p.returncode, expected,
                         f"operations.md line {line}: `{command}` exited {p.returncode}, the "
                         f"guide says {expected}\nstdout:\n{out[-3000:]}\nstderr:\n{err[-3000:]}")
        return out

    def test_every_command_of_the_guide_works(self):
        self.assertGreater(len(self.commands), 40)
        skipped = []
        for line, command, expected, skip in self.commands:
            if skip:
                skipped.append((line, command, skip))
                continue
            with self.subTest(line=line, command=command):
                self.run_command(line, command, expected)
            self.assertTrue(self.srv.running, f"nerve died after line {line}:\n"
                            + self.srv.stderr_text()[-4000:])
        for line, command, reason in skipped:
            print(f"operations.md:{line}: not run ({reason}): {command}", flush=True)
        self.assertLessEqual(len(skipped), SKIPS_MAX, skipped)

    def test_commands_not_run_still_parse(self):
        """A skipped `nerve ...` command has valid flags: `--help` appended parses it."""
        for line, command, _, skip in self.commands:
            if not skip or not command.startswith("nerve "):
                continue
            args = []
            for word in command.split()[1:]:
                if word[0] in "|&;<>" or word[0].isdigit() and ">" in word:
                    break  # a pipe or redirection: the rest is the shell's
                args.append(word)
            p = subprocess.run([nerve_bin()] + args + ["--help"],
                               env=clean_env(), capture_output=True, timeout=30)
            self.assertEqual(p.returncode, 0, f"line {line}: {command}: {p.stderr!r}")

    def test_alert_runbook_links_name_sections_of_the_guide(self):
        anchors = {slug(m) for m in re.findall(r"^#+ (.+)$", self.text, re.M)}
        with open(ALERTS) as f:
            links = re.findall(r"operations\.md#([a-z0-9-]+)", f.read())
        self.assertTrue(links)
        for link in links:
            self.assertIn(link, anchors)


if __name__ == "__main__":
    unittest.main()
