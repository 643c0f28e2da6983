"""Fetch JVM jars from Maven Central once, into a git-ignored cache.

Both the embedded Kafka broker and Spark's connectors (Delta, Kafka source)
come from here. Maven does the resolution (it is installed and reaches Maven
Central); a stamp file keyed on the coordinates makes the second call free.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from pipelines.settings import PROJECT_ROOT

JAR_CACHE = PROJECT_ROOT / ".cache" / "jars"


class JarFetchError(RuntimeError):
    """Maven could not provide the jars (offline, unknown coordinates, no mvn)."""


_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>local.lakehouse</groupId><artifactId>{name}-deps</artifactId><version>1</version>
  <dependencies>
{deps}
  </dependencies>
</project>
"""


# Some poms (Spark's among them) declare extra repositories whose hosts this
# machine cannot reach; Maven then fails instead of falling back. Routing every
# repository to Maven Central keeps resolution on the one registry we rely on.
_SETTINGS = """<settings xmlns="http://maven.apache.org/SETTINGS/1.0.0">
  <mirrors>
    <mirror><id>central-only</id><mirrorOf>*</mirrorOf>
      <url>https://repo.maven.apache.org/maven2</url></mirror>
  </mirrors>
</settings>
"""


def _dependency_xml(coordinate: str) -> str:
    parts = coordinate.split(":")
    if len(parts) != 3:
        raise JarFetchError(f"bad Maven coordinate '{coordinate}' (want group:artifact:version)")
    group, artifact, version = parts
    return (
        f"    <dependency><groupId>{group}</groupId><artifactId>{artifact}</artifactId>"
        f"<version>{version}</version></dependency>"
    )


def _artifact_name(jar: Path) -> str:
    """`jackson-core-2.13.5.jar` -> `jackson-core` (drop the version suffix)."""
    stem = jar.stem
    pieces = stem.split("-")
    for i, piece in enumerate(pieces):
        if piece[:1].isdigit() and i > 0:
            return "-".join(pieces[:i])
    return stem


def fetch(
    name: str, coordinates: list[str], provided_dir: Path | None = None, quiet: bool = True
) -> list[Path]:
    """Resolve `coordinates` with their runtime dependencies into `.cache/jars/<name>`.

    Jars whose artifact already ships in `provided_dir` (pyspark's own jars)
    are left out: Spark's versions win on the classpath anyway, and a second,
    older copy only invites conflicts.
    """
    key = hashlib.sha256("\n".join(sorted(coordinates)).encode()).hexdigest()[:12]
    dest = JAR_CACHE / f"{name}-{key}"
    stamp = dest / ".complete"
    if stamp.exists():
        return sorted(dest.glob("*.jar"))
    if shutil.which("mvn") is None:
        raise JarFetchError("Maven (mvn) is not installed; it is needed once to fetch jars")
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    work = dest / "_resolve"
    work.mkdir()
    deps = "\n".join(_dependency_xml(c) for c in coordinates)
    (work / "pom.xml").write_text(_POM.format(name=name, deps=deps))
    (work / "settings.xml").write_text(_SETTINGS)
    cmd = [
        "mvn", "-B", *(["-q"] if quiet else []), "-f", str(work / "pom.xml"),
        "-s", str(work / "settings.xml"),
        "dependency:copy-dependencies", f"-DoutputDirectory={work / 'lib'}",
        "-DincludeScope=runtime",
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        tail = " ".join((result.stdout + result.stderr).split()[-40:])
        raise JarFetchError(f"Maven could not fetch {', '.join(coordinates)}: {tail}")
    provided = (
        {_artifact_name(j) for j in provided_dir.glob("*.jar")} if provided_dir else set()
    )
    for jar in (work / "lib").glob("*.jar"):
        if _artifact_name(jar) not in provided:
            shutil.move(str(jar), dest / jar.name)
    shutil.rmtree(work)
    stamp.write_text("\n".join(coordinates) + "\n")
    return sorted(dest.glob("*.jar"))
