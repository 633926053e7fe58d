"""The Debian package: configured for /usr in a temp build dir (the four programs only), built
with cpack -G DEB, then checked from the outside: file list and Depends (dpkg-deb), maintainer
scripts, the packaged programs' version, and the systemd units (systemd-analyze verify, with
ExecStart pointed at the extracted binaries since the package is not installed here)."""
import os
import re
import shutil
import subprocess
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import SOURCE_DIR  # noqa: E402

PROGRAMS = ("snatch-host", "snatch-subscriber", "snatch-reconcile", "snatch-bench")
UNITS = ("snatch-host@.service", "snatch-subscriber.service")
# The Debian 12 runtime libraries the programs link (package name prefixes).
RUNTIME_LIBS = ("libc6", "libuv1", "libluajit", "libhiredis", "libnats", "libsqlite3-0",
                "libjansson4", "libhttp-parser", "libssl3")
EXPECTED_FILES = ["./usr/bin/" + p for p in PROGRAMS] + [
    "./usr/share/snatch/deduct.lua", "./usr/share/snatch/policy.lua",
    "./usr/share/doc/snatch/README.md", "./usr/share/doc/snatch/LICENSE",
    "./usr/share/doc/snatch/CHANGELOG.md", "./usr/share/doc/snatch/examples/README.md",
    "./usr/share/doc/snatch/examples/max4_per_buyer.lua",
    "./usr/lib/systemd/system/snatch-host@.service",
    "./usr/lib/systemd/system/snatch-subscriber.service",
    "./etc/default/snatch-host-main", "./etc/default/snatch-subscriber"]


def sh(*argv, cwd=None, timeout=300):
    p = subprocess.run(list(argv), cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       timeout=timeout)
    if p.returncode != 0:
        raise AssertionError("%s failed (%d):\n%s" % (" ".join(argv), p.returncode,
                                                      p.stdout.decode()[-3000:]))
    return p.stdout.decode()


class PackageTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="snatch-pkg-")
        b = os.path.join(cls.tmp, "build")
        # Release without debug info: the fastest build that is still what ships.
        sh("cmake", "-S", SOURCE_DIR, "-B", b, "-DCMAKE_BUILD_TYPE=Release",
           "-DCMAKE_INSTALL_PREFIX=/usr", "-DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON")
        sh("cmake", "--build", b, "-j2", "--target", *PROGRAMS)
        sh("cpack", "-G", "DEB", cwd=b)
        debs = [f for f in os.listdir(b) if f.endswith(".deb")]
        assert len(debs) == 1, debs
        cls.deb = os.path.join(b, debs[0])
        cls.root = os.path.join(cls.tmp, "root")
        sh("dpkg-deb", "-x", cls.deb, cls.root)
        cls.control = os.path.join(cls.tmp, "control")
        sh("dpkg-deb", "-e", cls.deb, cls.control)

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def field(self, name):
        return sh("dpkg-deb", "-f", self.deb, name).strip()

    def test_contents(self):
        listing = sh("dpkg-deb", "-c", self.deb)
        paths = {line.split()[5] for line in listing.splitlines()}
        for f in EXPECTED_FILES:
            self.assertIn(f, paths)
        for p in PROGRAMS:
            self.assertTrue(os.access(os.path.join(self.root, "usr/bin", p), os.X_OK), p)
        # Nothing of the build or source tree leaks in.
        self.assertFalse([p for p in paths if "build" in p or p.endswith(".in")], paths)

    def test_control(self):
        with open(os.path.join(SOURCE_DIR, "CMakeLists.txt")) as f:
            version = re.search(r"project\(snatch VERSION ([0-9.]+)", f.read()).group(1)
        self.assertEqual(self.field("Package"), "snatch")
        self.assertEqual(self.field("Version"), version)
        depends = self.field("Depends")
        for lib in RUNTIME_LIBS:
            self.assertRegex(depends, r"(^|, )%s" % re.escape(lib), depends)
        self.assertNotIn("-dev", depends)
        with open(os.path.join(self.control, "conffiles")) as f:
            self.assertEqual(sorted(f.read().split()),
                             ["/etc/default/snatch-host-main", "/etc/default/snatch-subscriber"])
        for script in ("postinst", "postrm"):
            path = os.path.join(self.control, script)
            self.assertTrue(os.access(path, os.X_OK), script)
            sh("sh", "-n", path)
        for p in PROGRAMS:
            out = sh(os.path.join(self.root, "usr/bin", p), "--version")
            self.assertEqual(out, "%s %s\n" % (p, version))
        # The packaged host looks for deduct.lua in the package's share dir.
        self.assertIn("/usr/share/snatch/deduct.lua",
                      sh(os.path.join(self.root, "usr/bin/snatch-host"), "--help"))

    def test_install_prefix(self):
        """cmake --install --prefix of the test's build tree writes only under that prefix."""
        build = os.environ.get("SNATCH_BUILD_DIR", os.path.join(SOURCE_DIR, "build"))
        with open(os.path.join(build, "CMakeCache.txt")) as f:
            prefix = re.search(r"^CMAKE_INSTALL_PREFIX:PATH=(.*)$", f.read(), re.M).group(1)
        if prefix == "/usr":  # its configuration would go to the system's /etc
            self.skipTest("build tree configured for /usr")
        inst = os.path.join(self.tmp, "inst")
        out = sh("cmake", "--install", build, "--prefix", inst)
        installed = re.findall(r"^-- (?:Installing|Up-to-date): (.*)$", out, re.M)
        self.assertGreater(len(installed), 10, out)
        self.assertEqual([p for p in installed if not p.startswith(inst + "/")], [])
        for f in ("bin/snatch-host", "share/snatch/deduct.lua", "share/doc/snatch/LICENSE",
                  "lib/systemd/system/snatch-host@.service", "etc/default/snatch-host-main"):
            self.assertTrue(os.path.exists(os.path.join(inst, f)), f)

    def test_units(self):
        units = {}
        for u in UNITS:
            with open(os.path.join(self.root, "usr/lib/systemd/system", u)) as f:
                units[u] = f.read()
        host, sub = units["snatch-host@.service"], units["snatch-subscriber.service"]
        self.assertIn("EnvironmentFile=/etc/default/snatch-host-%i\n", host)
        self.assertIn("$SNATCH_HOST_OPTS ${SNATCH_HOST_POLICY}", host)
        self.assertIn("EnvironmentFile=/etc/default/snatch-subscriber\n", sub)
        self.assertIn("ExecStart=/usr/bin/snatch-subscriber $SNATCH_SUBSCRIBER_OPTS", sub)
        for text in units.values():
            for line in ("DynamicUser=yes", "NoNewPrivileges=yes", "ProtectSystem=strict",
                         "KillSignal=SIGTERM", "CapabilityBoundingSet=\n"):
                self.assertIn(line, text)
            self.assertRegex(text, r"\nLimitNOFILE=\d{5,}\n")
        self.assertNotRegex(host, r"(?m)^MemoryDenyWriteExecute=yes")  # LuaJIT JIT
        # The default files define what the units expand.
        defaults = {}
        for name in ("snatch-host-main", "snatch-subscriber"):
            with open(os.path.join(self.root, "etc/default", name)) as f:
                defaults[name] = dict(re.findall(r"^([A-Z_]+)=(.*)$", f.read(), re.M))
        self.assertEqual(set(defaults["snatch-host-main"]),
                         {"SNATCH_HOST_OPTS", "SNATCH_HOST_POLICY"})
        self.assertTrue(os.path.exists(self.root + defaults["snatch-host-main"]
                                        ["SNATCH_HOST_POLICY"]))
        self.assertEqual(set(defaults["snatch-subscriber"]), {"SNATCH_SUBSCRIBER_OPTS"})
        # systemd-analyze verify checks that ExecStart's binary exists: point it at ours.
        vdir = os.path.join(self.tmp, "verify")
        os.makedirs(vdir)
        for u, text in units.items():
            with open(os.path.join(vdir, u), "w") as f:
                f.write(text.replace("/usr/bin/snatch-", self.root + "/usr/bin/snatch-"))
        p = subprocess.run(["systemd-analyze", "verify",
                            os.path.join(vdir, "snatch-host@main.service"),
                            os.path.join(vdir, "snatch-subscriber.service")],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = p.stdout.decode()
        self.assertEqual((p.returncode, out), (0, ""), out)


if __name__ == "__main__":
    unittest.main(verbosity=2)
