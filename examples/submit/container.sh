#!/bin/sh
# Stands in for `srun --container-image=...`: runs the worker command as given.
export IN_CONTAINER=local-stand-in
exec "$@"
