"""Runtime plumbing beneath the layers: the SparkSession factory and its log4j config
(`spark`), jars fetched from Maven Central (`jars`) and the project's own compiled jar
(`jvm`), the embedded Kafka broker (`kafka.embedded`), `prefetch`, which readies every
jar before a run (`python -m pipelines.runtime.prefetch`), and `runner`, which starts
the streaming layers. Nothing here transforms data."""
