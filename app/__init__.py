"""Service4CT service layer (API, worker, CLI). Never imports torch outside app/worker."""
