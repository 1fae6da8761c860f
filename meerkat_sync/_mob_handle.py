"""The ``Mob`` and ``Member`` handles: a mob id (and member id) bound to the client.

Each method is the client's ``*_mob_*`` call with the ids filled in; the client method's
docstring has the details. Handles hold no state and are safe to share between threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Mapping, Optional, Sequence

from ._deadline import USE_DEFAULT, Timeout

if TYPE_CHECKING:
    from ._mobs import MobMethods, MobSpawnSpec, PeerTarget
    from ._subscriptions import EventSubscription
    from .types import (
        MemberDeliveryReceipt,
        MobEvent,
        MobHelperResult,
        MobKickoffMemberSnapshot,
        MobMember,
        MobMemberSnapshot,
        MobRespawnResult,
        MobSpawnReceipt,
        MobSpawnResult,
        MobSummary,
        MobSystemContextReceipt,
    )


class Mob:
    """A mob of this client's runtime (``client.create_mob(...)`` or ``client.mob(mob_id)``)."""

    __slots__ = ("_client", "id")

    def __init__(self, client: MobMethods, mob_id: str) -> None:
        self._client = client
        self.id = mob_id

    def __repr__(self) -> str:
        return f"Mob({self.id!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mob) and other._client is self._client and other.id == self.id

    def __hash__(self) -> int:
        return hash((id(self._client), self.id))

    def member(self, meerkat_id: str) -> Member:
        """A handle on one member; nothing is sent until it is used."""
        return Member(self, meerkat_id)

    def status(self, *, timeout: Timeout = USE_DEFAULT) -> MobSummary:
        """See :meth:`MeerkatClient.mob_status`."""
        return self._client.mob_status(self.id, timeout=timeout)

    def members(self, *, timeout: Timeout = USE_DEFAULT) -> List[MobMember]:
        """See :meth:`MeerkatClient.list_mob_members`."""
        return self._client.list_mob_members(self.id, timeout=timeout)

    def events(
        self, *, after_cursor: int = 0, limit: int = 100, timeout: Timeout = USE_DEFAULT
    ) -> List[MobEvent]:
        """The mob's lifecycle log (``mob/events``); see :meth:`MeerkatClient.list_mob_events`."""
        return self._client.list_mob_events(self.id, after_cursor=after_cursor, limit=limit, timeout=timeout)

    def send(
        self,
        meerkat_id: str,
        content: Any,
        *,
        handling_mode: str = "queue",
        render_metadata: Optional[Mapping[str, Any]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MemberDeliveryReceipt:
        """See :meth:`MeerkatClient.send_mob_member_content`."""
        return self._client.send_mob_member_content(
            self.id,
            meerkat_id,
            content,
            handling_mode=handling_mode,
            render_metadata=render_metadata,
            timeout=timeout,
        )

    def spawn(
        self,
        *,
        profile: str,
        meerkat_id: str,
        initial_message: Optional[Any] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        resume_session_id: Optional[str] = None,
        labels: Optional[Mapping[str, str]] = None,
        context: Optional[Mapping[str, Any]] = None,
        additional_instructions: Optional[List[str]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobSpawnReceipt:
        """See :meth:`MeerkatClient.spawn_mob_member`."""
        return self._client.spawn_mob_member(
            self.id,
            profile=profile,
            meerkat_id=meerkat_id,
            initial_message=initial_message,
            runtime_mode=runtime_mode,
            backend=backend,
            resume_session_id=resume_session_id,
            labels=labels,
            context=context,
            additional_instructions=additional_instructions,
            timeout=timeout,
        )

    def spawn_many(
        self, specs: Sequence[MobSpawnSpec], *, timeout: Timeout = USE_DEFAULT
    ) -> List[MobSpawnResult]:
        """See :meth:`MeerkatClient.spawn_mob_members`."""
        return self._client.spawn_mob_members(self.id, specs, timeout=timeout)

    def retire(self, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.retire_mob_member`."""
        self._client.retire_mob_member(self.id, meerkat_id, timeout=timeout)

    def respawn(
        self, meerkat_id: str, initial_message: Optional[Any] = None, *, timeout: Timeout = USE_DEFAULT
    ) -> MobRespawnResult:
        """See :meth:`MeerkatClient.respawn_mob_member`."""
        return self._client.respawn_mob_member(self.id, meerkat_id, initial_message, timeout=timeout)

    def force_cancel(self, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.force_cancel_mob_member`."""
        self._client.force_cancel_mob_member(self.id, meerkat_id, timeout=timeout)

    def member_status(self, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT) -> MobMemberSnapshot:
        """See :meth:`MeerkatClient.mob_member_status`."""
        return self._client.mob_member_status(self.id, meerkat_id, timeout=timeout)

    def wait_for_kickoff_complete(
        self,
        *,
        member_ids: Optional[List[str]] = None,
        timeout_ms: Optional[int] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> List[MobKickoffMemberSnapshot]:
        """See :meth:`MeerkatClient.wait_mob_kickoff`."""
        return self._client.wait_mob_kickoff(
            self.id, member_ids=member_ids, timeout_ms=timeout_ms, timeout=timeout
        )

    def spawn_helper(
        self,
        prompt: Any,
        *,
        meerkat_id: Optional[str] = None,
        profile_name: Optional[str] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobHelperResult:
        """See :meth:`MeerkatClient.spawn_mob_helper`."""
        return self._client.spawn_mob_helper(
            self.id,
            prompt,
            meerkat_id=meerkat_id,
            profile_name=profile_name,
            runtime_mode=runtime_mode,
            backend=backend,
            timeout=timeout,
        )

    def fork_helper(
        self,
        source_member_id: str,
        prompt: Any,
        *,
        meerkat_id: Optional[str] = None,
        profile_name: Optional[str] = None,
        fork_context: Optional[Mapping[str, Any]] = None,
        runtime_mode: Optional[str] = None,
        backend: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobHelperResult:
        """See :meth:`MeerkatClient.fork_mob_helper`."""
        return self._client.fork_mob_helper(
            self.id,
            source_member_id,
            prompt,
            meerkat_id=meerkat_id,
            profile_name=profile_name,
            fork_context=fork_context,
            runtime_mode=runtime_mode,
            backend=backend,
            timeout=timeout,
        )

    def wire(self, member: str, peer: PeerTarget, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.wire_mob_members`."""
        self._client.wire_mob_members(self.id, member, peer, timeout=timeout)

    def unwire(self, member: str, peer: PeerTarget, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.unwire_mob_members`."""
        self._client.unwire_mob_members(self.id, member, peer, timeout=timeout)

    def lifecycle(self, action: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.mob_lifecycle`."""
        self._client.mob_lifecycle(self.id, action, timeout=timeout)

    def append_system_context(
        self,
        meerkat_id: str,
        text: str,
        *,
        source: Optional[str] = None,
        idempotency_key: Optional[str] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MobSystemContextReceipt:
        """See :meth:`MeerkatClient.append_mob_system_context`."""
        return self._client.append_mob_system_context(
            self.id, meerkat_id, text, source=source, idempotency_key=idempotency_key, timeout=timeout
        )

    def flows(self, *, timeout: Timeout = USE_DEFAULT) -> List[str]:
        """See :meth:`MeerkatClient.list_mob_flows`."""
        return self._client.list_mob_flows(self.id, timeout=timeout)

    def run_flow(
        self, flow_id: str, params: Optional[Mapping[str, Any]] = None, *, timeout: Timeout = USE_DEFAULT
    ) -> str:
        """See :meth:`MeerkatClient.run_mob_flow`."""
        return self._client.run_mob_flow(self.id, flow_id, params, timeout=timeout)

    def flow_status(self, run_id: str, *, timeout: Timeout = USE_DEFAULT) -> Optional[Dict[str, Any]]:
        """See :meth:`MeerkatClient.get_mob_flow_status`."""
        return self._client.get_mob_flow_status(self.id, run_id, timeout=timeout)

    def cancel_flow(self, run_id: str, *, timeout: Timeout = USE_DEFAULT) -> None:
        """See :meth:`MeerkatClient.cancel_mob_flow`."""
        self._client.cancel_mob_flow(self.id, run_id, timeout=timeout)

    def subscribe_events(
        self, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """See :meth:`MeerkatClient.subscribe_mob_events`."""
        return self._client.subscribe_mob_events(self.id, timeout=timeout, idle_timeout=idle_timeout)

    def subscribe_member_events(
        self, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """See :meth:`MeerkatClient.subscribe_mob_member_events`."""
        return self._client.subscribe_mob_member_events(
            self.id, meerkat_id, timeout=timeout, idle_timeout=idle_timeout
        )

    def subscribe_all(
        self, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """The official SDK's other name for :meth:`subscribe_events`."""
        return self.subscribe_events(timeout=timeout, idle_timeout=idle_timeout)

    def subscribe_member(
        self, meerkat_id: str, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """The official SDK's other name for :meth:`subscribe_member_events`."""
        return self.subscribe_member_events(meerkat_id, timeout=timeout, idle_timeout=idle_timeout)


class Member:
    """One member of a mob (``mob.member(meerkat_id)``)."""

    __slots__ = ("meerkat_id", "mob")

    def __init__(self, mob: Mob, meerkat_id: str) -> None:
        self.mob = mob
        self.meerkat_id = meerkat_id

    def __repr__(self) -> str:
        return f"Member({self.mob.id!r}, {self.meerkat_id!r})"

    def send(
        self,
        content: Any,
        *,
        handling_mode: str = "queue",
        render_metadata: Optional[Mapping[str, Any]] = None,
        timeout: Timeout = USE_DEFAULT,
    ) -> MemberDeliveryReceipt:
        """See :meth:`MeerkatClient.send_mob_member_content`."""
        return self.mob.send(
            self.meerkat_id,
            content,
            handling_mode=handling_mode,
            render_metadata=render_metadata,
            timeout=timeout,
        )

    def events(
        self, *, timeout: Timeout = USE_DEFAULT, idle_timeout: Timeout = USE_DEFAULT
    ) -> EventSubscription:
        """This member's event subscription; see :meth:`MeerkatClient.subscribe_mob_member_events`."""
        return self.mob.subscribe_member_events(self.meerkat_id, timeout=timeout, idle_timeout=idle_timeout)
