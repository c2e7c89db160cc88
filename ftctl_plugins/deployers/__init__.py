"""Built-in deployers plugins, registered through the `ftctl` entry-point group."""

from ftctl.api import hookimpl


@hookimpl
def register_deployers(register):
    from ftctl_plugins.deployers.lora_swap import LoraSwapDeployer
    from ftctl_plugins.deployers.pm2 import Pm2Deployer

    register(Pm2Deployer)
    register(LoraSwapDeployer)
