"""Fetch every jar the project needs (Kafka broker, Spark connectors) once, and build
the project's own (silver's fast path)."""

from __future__ import annotations

import sys

from pipelines.runtime import jars, jvm
from pipelines.runtime.kafka.embedded import broker_coordinates
from pipelines.runtime.spark import pyspark_jars_dir
from pipelines.settings import load_settings


def main() -> None:
    # `--coordinates CONF`: print the Spark packages of a conf file (merged over the files
    # it extends, as every command reads it), comma-separated,
    # for spark-submit --packages (cluster runs fetch nothing themselves).
    if len(sys.argv) == 3 and sys.argv[1] == "--coordinates":
        print(",".join(load_settings(sys.argv[2]).spark.packages))
        return
    # `--project-jar`: build the project's own jar if needed and print its path, for
    # spark-submit --jars.
    if sys.argv[1:] == ["--project-jar"]:
        print(jvm.project_jar(pyspark_jars_dir()))
        return
    settings = load_settings()
    broker = jars.fetch("kafka", broker_coordinates(settings.kafka.embedded.version))
    spark = jars.fetch("spark", settings.spark.packages, provided_dir=pyspark_jars_dir())
    own = jvm.project_jar(pyspark_jars_dir())
    print(f"jars ready: {len(broker)} for the Kafka broker, {len(spark)} for Spark, {own.name}")


if __name__ == "__main__":
    main()
