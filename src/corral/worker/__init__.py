"""What runs inside a job: executes tasks from a manifest and writes one result file per task."""
