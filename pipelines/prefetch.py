"""Fetch every jar the project needs (Kafka broker, Spark connectors) once."""

from __future__ import annotations

import sys

from pipelines import jars
from pipelines.kafka.embedded import broker_coordinates
from pipelines.settings import load_settings
from pipelines.spark import pyspark_jars_dir


def main() -> None:
    # `--coordinates CONF`: print the Spark packages of a conf file, comma-separated,
    # for spark-submit --packages (cluster runs fetch nothing themselves).
    if len(sys.argv) == 3 and sys.argv[1] == "--coordinates":
        print(",".join(load_settings(sys.argv[2]).spark.packages))
        return
    settings = load_settings()
    broker = jars.fetch("kafka", broker_coordinates(settings.kafka.embedded.version))
    spark = jars.fetch("spark", settings.spark.packages, provided_dir=pyspark_jars_dir())
    print(f"jars ready: {len(broker)} for the Kafka broker, {len(spark)} for Spark")


if __name__ == "__main__":
    main()
