"""A private cluster CA and node certificates, made with the `openssl` CLI.

The commands are the ones docs/operations.md ("Cluster TLS") gives operators, so the
tests exercise what the docs say. Keys are EC P-256, unencrypted (nerve reads them at
start-up without a passphrase).
"""

import os
import shutil
import subprocess
import tempfile
import unittest

# Leaf certificates serve both sides of a link: a node is a TLS server to the peers that
# dial it and a TLS client to the peers it dials.
NODE_EXTENSIONS = """basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature
extendedKeyUsage = serverAuth, clientAuth
"""


def openssl_cli():
    path = shutil.which("openssl")
    if path is None:
        raise unittest.SkipTest("the openssl command-line tool is not installed")
    return path


def _run(args, cwd):
    r = subprocess.run([openssl_cli()] + args, cwd=cwd, capture_output=True, text=True,
                       timeout=60)
    if r.returncode != 0:
        raise AssertionError(f"openssl {' '.join(args)} failed:\n{r.stderr}")


class Pki:
    """One CA in a temp directory: ca.pem, ca.key, and ID.pem / ID.key per node."""

    def __init__(self, name="nerve cluster CA"):
        self.directory = tempfile.mkdtemp(prefix="nerve-pki-")
        directory = self.directory
        _run(["req", "-x509", "-new", "-nodes", "-newkey", "ec",
              "-pkeyopt", "ec_paramgen_curve:P-256", "-days", "3650",
              "-subj", f"/CN={name}",
              "-addext", "basicConstraints=critical,CA:TRUE",
              "-addext", "keyUsage=critical,keyCertSign,cRLSign",
              "-keyout", "ca.key", "-out", "ca.pem"], directory)
        with open(os.path.join(directory, "node.ext"), "w", encoding="utf-8") as f:
            f.write(NODE_EXTENSIONS)
        self.ca = os.path.join(directory, "ca.pem")

    def node(self, node_id):
        """Makes (once) and returns {"cert", "key"} of node `node_id`, signed by this CA."""
        cert = os.path.join(self.directory, f"{node_id}.pem")
        key = os.path.join(self.directory, f"{node_id}.key")
        if not os.path.exists(cert):
            _run(["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                  "-subj", f"/CN={node_id}", "-keyout", f"{node_id}.key",
                  "-out", f"{node_id}.csr"], self.directory)
            _run(["x509", "-req", "-in", f"{node_id}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                  "-CAcreateserial", "-days", "825", "-extfile", "node.ext",
                  "-out", f"{node_id}.pem"], self.directory)
        return {"cert": cert, "key": key}

    def cleanup(self):
        shutil.rmtree(self.directory, ignore_errors=True)

    def tls_config(self, node_id, ca=None):
        """The nerve.yaml of node `node_id`: cluster.tls with its certificate and key, and
        `ca` (default: this CA) as the CA that peers' certificates must be signed by."""
        files = self.node(node_id)
        return {"cluster": {"tls": {"cert": files["cert"], "key": files["key"],
                                    "ca": ca or self.ca}}}
