from django.apps import AppConfig


class LearningConfig(AppConfig):
    name = "learning"

    def ready(self) -> None:
        from learning import acquisition, receivers
        from projects.models import register_strategies

        register_strategies([(name, strategy.title or name) for name, strategy in acquisition.STRATEGIES.items()])
        receivers.connect()
