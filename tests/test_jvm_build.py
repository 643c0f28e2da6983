"""The project's jar: built once from the Java sources, with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipelines.runtime import jvm
from pipelines.runtime.spark import pyspark_jars_dir


def _sources(tmp_path: Path, body: str) -> Path:
    src = tmp_path / "src" / "demo"
    src.mkdir(parents=True)
    (src / "Demo.java").write_text(f"package demo;\npublic final class Demo {{ {body} }}\n")
    return tmp_path / "src"


def test_builds_once_and_names_the_jar_by_its_sources(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(jvm, "JAR_CACHE", tmp_path / "jars")
    monkeypatch.setattr(jvm, "SOURCES", _sources(tmp_path, "public static int one() { return 1; }"))
    first = jvm.project_jar(pyspark_jars_dir())
    assert first.exists()
    stamp = first.stat().st_mtime_ns
    assert jvm.project_jar(pyspark_jars_dir()) == first
    assert first.stat().st_mtime_ns == stamp  # not built again
    edited = _sources(tmp_path / "b", "public static int two() { return 2; }")
    monkeypatch.setattr(jvm, "SOURCES", edited)
    assert jvm.project_jar(pyspark_jars_dir()) != first


def test_a_compile_error_names_the_sources_and_what_javac_said(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(jvm, "JAR_CACHE", tmp_path / "jars")
    monkeypatch.setattr(jvm, "SOURCES", _sources(tmp_path, "int broken( { }"))
    with pytest.raises(jvm.JvmBuildError, match=r"(?s)javac failed on .*Demo\.java:2: error"):
        jvm.project_jar(pyspark_jars_dir())
    assert not list((tmp_path / "jars").glob("*.jar"))


def test_no_jdk_is_a_clear_error(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(jvm, "JAR_CACHE", tmp_path / "jars")
    monkeypatch.setattr(jvm, "SOURCES", _sources(tmp_path, ""))
    monkeypatch.setattr(jvm.shutil, "which", lambda _: None)
    with pytest.raises(jvm.JvmBuildError, match="javac .*JDK"):
        jvm.project_jar(pyspark_jars_dir())
