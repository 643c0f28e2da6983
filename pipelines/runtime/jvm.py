"""The project's own JVM code (silver's fast path), compiled once into a cached jar.

The Java sources ship inside the package (`pipelines/silver/jvm`); they are
compiled with the JDK's `javac` against pyspark's own jars, so the jar always
matches the Spark it runs in. The jar is named by a digest of the sources and
of that Spark version: an edit or an upgrade builds a new one, the second call
is free.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import zipfile
from pathlib import Path

from pipelines.runtime.jars import JAR_CACHE

SOURCES = Path(__file__).parents[1] / "silver" / "jvm"


class JvmBuildError(RuntimeError):
    """The project's Java sources could not be compiled (no JDK, a compile error)."""


def _sources() -> list[Path]:
    return sorted(SOURCES.rglob("*.java"))


def _digest(spark_jars: Path) -> str:
    h = hashlib.sha256()
    for source in _sources():
        h.update(source.relative_to(SOURCES).as_posix().encode())
        h.update(source.read_bytes())
    h.update("\n".join(sorted(j.name for j in spark_jars.glob("*.jar"))).encode())
    return h.hexdigest()[:12]


def project_jar(spark_jars: Path) -> Path:
    """The jar of the project's Java code, compiled against `spark_jars` if not cached."""
    jar = JAR_CACHE / f"lakehouse-jvm-{_digest(spark_jars)}.jar"
    if jar.exists():
        return jar
    if shutil.which("javac") is None:
        raise JvmBuildError(
            "javac (a JDK 17) is needed once to compile silver's fast path "
            f"({SOURCES}); install a JDK, not only a JRE"
        )
    JAR_CACHE.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=JAR_CACHE) as work:
        classes = Path(work) / "classes"
        cmd = [
            "javac", "--release", "17", "-nowarn", "-encoding", "UTF-8",
            "-cp", str(spark_jars / "*"), "-d", str(classes), *map(str, _sources()),
        ]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise JvmBuildError(f"javac failed on {SOURCES}:\n{result.stderr.strip()}")
        partial = Path(work) / "out.jar"
        with zipfile.ZipFile(partial, "w", zipfile.ZIP_DEFLATED) as out:
            for path in sorted(classes.rglob("*.class")):
                out.write(path, path.relative_to(classes).as_posix())
        # Atomic: a concurrent builder finds either no jar or a whole one.
        os.replace(partial, jar)
    return jar
