"""spark-submit entry point: the `lakehouse` command line as a Spark application.

    spark-submit --master spark://master:7077 \\
      --packages "$(python -m pipelines.runtime.prefetch --coordinates conf/cluster.yaml)" \\
      --jars "$(python -m pipelines.runtime.prefetch --project-jar)" \\
      jobs/lakehouse_job.py stream --conf conf/cluster.yaml --layers bronze

conf/cluster.yaml (or your copy of it) is an overlay of conf/base.yaml; --coordinates
reads the packages of the merged settings. Any command works the same way (stream,
retrain, maintain, quality, reconcile).
The `pipelines` package must be importable on the driver and the executors
(see README, "Running on a cluster").
"""

from pipelines.cli import main

if __name__ == "__main__":
    main()
