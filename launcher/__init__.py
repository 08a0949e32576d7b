"""The launcher: composes, starts, supervises and stops the stack (`./launch.sh` runs `python -m launcher`)."""
