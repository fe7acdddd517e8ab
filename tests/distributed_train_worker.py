"""One process of a 2-process `jax.distributed` training run on 127.0.0.1 (started by the tests).

argv: coordinator_address process_id token_dir workdir
Runs the real `m4 train` code path (m4.cli.main) with explicit jax.distributed flags.
"""

import sys

from m4 import cli

if __name__ == "__main__":
    coordinator, process_id, token_dir, workdir = sys.argv[1:5]
    sys.exit(cli.main([
        "train", "--config", "experiments/demo.py:test", "--workdir", workdir, "--quiet",
        "--distributed", "explicit", "--coordinator", coordinator, "--num-processes", "2",
        "--process-id", process_id, f"--config.data.shards={token_dir}",
        "--config.checkpoint.async_save=False",
    ]))
