"""What the benchmark scripts share, one module per concern. Only the standard library is imported at module level:
the learn2learn-side scripts (bench/_l2l_*.py) import it under learn2learn's virtualenv.

    measure  Stopwatch, run_for / measure_rate (repeat a call for a time), memory_mb, machine_busy_s, wait_for_quiet
    stats    spread (median, min, max of repeated figures), fmt_spread, percentile
    results  worker processes and their result line (emit, parse_result, last_result, run_worker, worker_env);
             bench/results/*.json (results_path, load_json, write_json); publish (the JSON and the docs section),
             add_output_arguments (--results, --doc); machine_info, source_hashes
    docs     render (fill docs/templates/NAME.md), template_heading, markdown_table, fmt_sources, replace_section
    peers    the learn2learn peer: add_l2l_argument, resolve_l2l_python, l2l_line; extract_bundled
"""

from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent.parent
REPO = BENCH_DIR.parent
