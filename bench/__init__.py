"""MetTrack benchmarks: each ``bench/bench_*.py`` module has a ``main()`` that prints its figures."""
