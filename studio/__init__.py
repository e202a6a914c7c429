"""Label Studio as a data source and target, used by both `training` and `exchange`.

provision.py  the label-studio-sdk client: connect with retries, create/update a project, import tasks, export them
source.py     the one data-source rule (an explicit --from-export file wins over $LABEL_STUDIO_URL) and export files
options.py    the command-line options every command shares (--schema, --from-export, --ls-url, --project, ...)
"""
