from django.apps import AppConfig


class FunctionsConfig(AppConfig):
    name = "functions"
    verbose_name = "FaaS functions and tasks"

    def ready(self):
        from functions import audit

        audit.connect_signals()  # API tokens created and revoked go into the audit trail
