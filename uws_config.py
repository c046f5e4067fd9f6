# Example UWS configuration (traitlets). Copy it, edit it, and run:  uws --config uws_config.py
# `uws generate-config` prints every option with its documentation.
# An existing deployment's config.json (the original server's format) works too:
#   uws --config /etc/uws/config.json
c = get_config()  # noqa: F821  (provided by traitlets when the file is loaded)

# Where the server listens, and the URL browsers use to reach it (e.g. behind nginx with TLS).
c.UWSApp.ip = "127.0.0.1"
c.UWSApp.port = 8000
# c.UWSApp.public_url = "https://workspaces.example.org"

# SQLite suits one server; PostgreSQL for production:
# c.UWSApp.db_url = "postgresql://uws@db.example.org/uws"

# Logins: a trusted back end (the portal) logs users in with a client token made by
# `uws create-client-token portal`. Users map to OS accounts of the same name.
c.UWSApp.authenticator_class = "local"
c.LocalAuthenticator.create_system_users = False

# Globus instead:
# c.UWSApp.authenticator_class = "globus"
# c.GlobusAuthenticator.client_id = "..."
# c.GlobusAuthenticator.client_secret = "..."
# c.GlobusAuthenticator.mode = "token"
# c.GlobusAuthenticator.allowed_globus_groups = ["<group uuid>"]

# Workspaces live at <root_dir>/<username>/<workspace id>/.
c.LocalFileSystemStorage.root_dir = "/srv/uws/workspaces"
# Symlinks may point only into these directories (e.g. a read-only dataset mount):
# c.LocalFileSystemStorage.allowed_symlink_roots = ["/datasets"]

c.UWSApp.max_body_size = 100 * 1024 * 1024  # uploads
c.UWSApp.max_json_body_size = 1024 * 1024  # every other request, logins included
c.UWSApp.token_expiry_seconds = 0  # 0: tokens last until logout
c.UWSApp.cors_allowed_origins = ["*"]

# Where sessions run, and the job types users can start there (the original format).
c.UWSApp.resources = {
    "main_resource": {
        "name": "Local Resource",
        "resource_type": "LocalResource",
        "passthrough_domain": "http://127.0.0.1:8000",
        "connection_details": {},
        "parameter_mapping": {"num_cpus": "cpus_per_task", "memory_mb": "memory_per_node",
                              "time_limit_min": "time_limit"},
    }
}
c.UWSApp.job_types = {
    "local_test_job": {
        "name": "Local Test Job",
        "job_type": "LocalTestJob",
        "environment_details": {"main_resource": {}},
    },
}
