from django.apps import AppConfig


class ServingAppConfig(AppConfig):
    name = "serving"

    def ready(self) -> None:
        from serving import receivers

        receivers.connect()
