"""Built-in trainer plugins, registered through the `ftctl` entry-point group."""

from ftctl.api import hookimpl


@hookimpl
def register_trainers(register):
    from ftctl_plugins.trainers.dpo import DpoTrainer
    from ftctl_plugins.trainers.kto import KtoTrainer
    from ftctl_plugins.trainers.lora import LoraTrainer

    register(LoraTrainer)
    register(DpoTrainer)
    register(KtoTrainer)
