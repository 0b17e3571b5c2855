"""Entry point: ``python -m bench [options]`` or ``python -m bench crash|txn|transport|nemesis
...``."""

import sys

if len(sys.argv) > 1 and sys.argv[1] == "crash":
    from bench.crash import main as crash_main

    sys.exit(crash_main(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == "transport":
    from bench.transport import main as transport_main

    sys.exit(transport_main(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == "nemesis":
    from bench.nemesis.run import main as nemesis_main

    sys.exit(nemesis_main(sys.argv[2:]))
if len(sys.argv) > 1 and sys.argv[1] == "txn":
    from bench.txn import main as txn_main

    sys.exit(txn_main(sys.argv[2:]))

from bench.cli import main

sys.exit(main())
