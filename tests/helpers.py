"""Test helpers: the condition wait lives with the process tools in scripts/."""

from scripts.waiting import wait_until


def finish_task(task_id, status: str, result: bytes, error: str = "", ttl: int = 60) -> bool:
    """Give a task a final state through the store, as a dispatcher would."""
    from functions import services
    from workers.protocol import Result

    return services.task_store().finish([Result(str(task_id), status, result, error)], ttl)[0]


def client_for(user=None):
    """A DRF test client, signed in with a token of `user` (anonymous without one)."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


__all__ = ["client_for", "finish_task", "wait_until"]
