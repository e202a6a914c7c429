"""`workbench predict`: bulk pre-annotation of archives on Ray Data (local or a cluster), into Parquet and Label
Studio, resumable. Ray is imported only inside the job (bulk/job.py), never by the backend or `workbench --help`."""
