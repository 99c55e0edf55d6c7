"""Pipeline benchmark of issue #6: the whole worker on the real broker against a plain
aiokafka consume-transform-produce loop. Run ``python -m bench.pipeline --help``;
see bench/README.md ("Pipeline benchmark")."""
