"""``edgeloop console``: the fleet, the rollouts, the models and the label queue in a browser.

One process (:mod:`deploy.console.app`) that reads the trainer through its HTTP API
(:mod:`deploy.console.trainer_client`), the rollout controller's state through one adapter
(:mod:`deploy.console.rollouts`) and the devices live over MQTT (:mod:`deploy.console.live`).
"""
