"""`whisper-service` (or `python -m whisper_service`): the command line (whisper_service/cli/)."""

import sys


def run() -> int:
    """The console command's entry point (pyproject.toml's [project.scripts])."""
    if sys.argv[1:2] == ["live"]:
        # the live client needs neither torch nor whisper: it starts in half a second, not six
        from whisper_service.cli.live_client import main as live_main

        return live_main(sys.argv[2:])
    from whisper_service.cli.main import main

    return main()


if __name__ == "__main__":
    sys.exit(run())
