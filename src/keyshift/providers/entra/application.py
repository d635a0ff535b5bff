"""What the Entra ID providers share: a Graph client signed in as keyshift's identity
(the `entra` integration), the application a credential names by its appId, and
closing both."""

from __future__ import annotations

from typing import Protocol, TypeVar

from keyshift.azure import EntraIntegration
from keyshift.context import PluginContext
from keyshift.errors import PermanentError
from keyshift.providers.connection import ConnectedProvider
from keyshift.providers.graph import (
    Application,
    GraphClient,
    SharedTokenSource,
    odata_literal,
)


class ApplicationConfig(Protocol):
    """A provider config that names an Entra ID application and the integration to it."""

    @property
    def integration(self) -> str: ...

    @property
    def app_id(self) -> str: ...


AppConfigT = TypeVar("AppConfigT", bound=ApplicationConfig)


class GraphApplicationProvider(ConnectedProvider[AppConfigT, EntraIntegration]):
    """Base of a provider that changes an Entra ID application's credentials through
    Microsoft Graph."""

    integration_model = EntraIntegration

    def __init__(self, config: AppConfigT, context: PluginContext) -> None:
        super().__init__(config, context)
        self._tokens: SharedTokenSource | None = None
        self._graph: GraphClient | None = None

    def _client(self) -> GraphClient:
        if self._graph is None:
            integration = self._integration
            self._tokens = tokens = SharedTokenSource(
                lambda: integration.credential(self.context),
                self.context.tokens,
                integration.identity,
            )
            self._graph = GraphClient(
                tokens,
                self.context,
                base_url=integration.graph_url,
                verify=integration.ssl_verify(),
                budget=integration.budget(self.context),
            )
        return self._graph

    async def _application(self, graph: GraphClient) -> Application:
        app_id = self.config.app_id
        found = [app async for app in graph.list_applications(f"appId eq {odata_literal(app_id)}")]
        if not found:
            raise PermanentError(
                f"no application with appId {app_id} in tenant {self._integration.tenant_id} "
                "(or keyshift may not read it)"
            )
        return found[0]

    async def aclose(self) -> None:
        graph, tokens = self._graph, self._tokens
        self._graph = self._tokens = None
        if graph is not None:
            await graph.aclose()
        if tokens is not None:
            await tokens.aclose()
