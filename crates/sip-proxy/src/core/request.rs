//! The request path: validation and routing (§16.3–§16.5), branches (§16.6), the stateless
//! 2xx ACK (§16.11), CANCEL (§16.10).

use super::*;

impl Proxy {
    pub(super) fn on_request(
        &self,
        now: Instant,
        src: Source,
        msg: Message,
        out: &mut Vec<Transmit>,
    ) {
        Stats::inc(&self.stats.rcv_requests);
        // the source whose transactions are counted (none: exempt, or no flood defence)
        let mut counted = None;
        if let Some(p) = &self.pike {
            if !self.pike_exempt(p, &src) {
                if !self.pike_pass(now, p, &src, &msg) {
                    return;
                }
                counted = Some(p.key(src.addr.ip()));
            }
        }
        if msg.headers().len() > self.cfg.max_headers {
            return self.reply_stateless(
                &src,
                &msg,
                reject(400, "Bad Request (too many header fields)"),
                out,
            );
        }
        if too_many_vias(&msg, self.cfg.max_vias) {
            return self.reply_stateless(
                &src,
                &msg,
                reject(400, "Bad Request (too many Via entries)"),
                out,
            );
        }
        let Ok(key) = server_key(&msg) else {
            return self.reply_stateless(&src, &msg, reject(400, "Bad Request (Via)"), out);
        };
        match msg.method() {
            Some(Method::Ack) => return self.on_ack(now, src, msg, key, out),
            Some(Method::Cancel) => return self.on_cancel(now, src, msg, out),
            _ => {}
        }
        let si = self.shard_of_key(&key);
        {
            let mut g = self.lock(si);
            let shard = &mut *g;
            if let Some(&id) = shard.by_key.get(&key) {
                if let Some(ctx) = shard.ctxs.get_mut(&id) {
                    match &mut ctx.server {
                        ServerTxn::Invite(s) => s.on_invite(),
                        ServerTxn::NonInvite(s) => s.on_request(),
                    };
                    Stats::inc(&self.stats.retransmissions_absorbed);
                    self.flush_server(ctx, out);
                    return;
                }
            }
            if let Some((_, data)) = shard.answered.get(&key) {
                Stats::inc(&self.stats.retransmissions_absorbed);
                out.push(Transmit {
                    target: src.reply_target(),
                    data: data.clone(),
                    origin: None,
                    tls_name: None,
                });
                return;
            }
        }
        if let Some(reg) = &self.registrar {
            let trusted = self.is_media_server(src.addr) || reg.is_trusted_ip(src.addr.ip());
            if msg.method() == Some(Method::Register)
                && reg.config().mode == RegistrarMode::Local
                && msg.uri().is_ok_and(|u| {
                    u.user.is_none() && (self.is_us(&u) || reg.is_local_domain(u.host))
                })
            {
                let r = reg.register(now, &src, &msg, trusted);
                return self.reply_answered(now, si, key, &src, &msg, r.into(), out);
            }
        }
        let decision = match self.decide(now, &src, &msg) {
            Ok(d) => d,
            Err(r) => {
                self.account_refused(now, &src, &msg, &r);
                if self.registrar.is_some() {
                    return self.reply_answered(now, si, key, &src, &msg, r, out);
                }
                return self.reply_stateless(&src, &msg, r, out);
            }
        };
        let (plan, candidates) = match decision {
            Decision::LocalOk => {
                let extra = vec!["Allow: INVITE, ACK, CANCEL, BYE, OPTIONS, INFO, UPDATE, PRACK, SUBSCRIBE, NOTIFY, REFER, MESSAGE, REGISTER".to_string(), "Accept: application/sdp".to_string()];
                let mut r = reject(200, "OK");
                r.extra = extra;
                return self.reply_stateless(&src, &msg, r, out);
            }
            Decision::Forward { plan, candidates } => (plan, candidates),
        };
        let invite = msg.method() == Some(Method::Invite);
        let in_dialog = msg.to_tag().is_some();
        if msg.method() == Some(Method::Bye) {
            self.router.on_call_ended(msg.call_id());
            self.media_delete(msg.call_id());
            if let Some(d) = &self.dialogs {
                if let Some((dlg, who)) = d.on_bye(
                    msg.call_id(),
                    msg.from_tag().unwrap_or(""),
                    msg.to_tag().unwrap_or(""),
                ) {
                    tracing::debug!(
                        call_id = dlg.call_id(),
                        id = dlg.id,
                        hung_up = who.as_str(),
                        "dialog ended"
                    );
                    self.account_ended(now, &dlg, who);
                }
            }
        }
        if let Some(k) = counted {
            if !self.count_source(k) {
                Stats::inc(&self.stats.transactions_refused);
                let mut r = reject(
                    503,
                    "Service Unavailable (too many transactions from this source)",
                );
                r.extra.push("Retry-After: 10".into());
                return self.reply_stateless(&src, &msg, r, out);
            }
        }
        if invite && !in_dialog {
            self.router.on_call_from(msg.call_id(), src.addr);
        }
        let reliable = src.transport.is_reliable();
        let id =
            self.counter.fetch_add(1, Ordering::Relaxed) * self.shards.len() as u64 + si as u64;
        let server = if invite {
            ServerTxn::Invite(ServerInvite::new(reliable, self.cfg.timers))
        } else {
            ServerTxn::NonInvite(ServerNonInvite::new(reliable, self.cfg.timers))
        };
        let mut ctx = Ctx {
            id,
            key: key.clone(),
            invite,
            resp_target: src.reply_target(),
            server,
            req: Some(msg),
            plan,
            candidates,
            next_candidate: 0,
            branches: Vec::with_capacity(1),
            best: None,
            fallback: (503, "Service Unavailable (no destination)".into()),
            fast_failover: !in_dialog,
            final_sent: false,
            cancelled: false,
            armed: None,
            counted,
            wait: None,
            outbox: None,
            media: None,
        };
        if invite {
            let trying = ctx
                .req
                .as_ref()
                .map(|r| local_response(r, 100, "Trying", "", &[], &self.cfg.server))
                .unwrap_or_default();
            ctx.server.send_response(now, 100, trying);
            self.flush_server(&mut ctx, out);
        }
        if !self.start_branch(now, &mut ctx, out) {
            self.finalize(now, &mut ctx, out);
        } else if ctx.plan.parallel {
            while ctx.wait.is_none() && self.start_branch(now, &mut ctx, out) {}
        }
        let mut g = self.lock(si);
        let shard = &mut *g;
        shard.by_key.insert(key, id);
        shard.ctxs.insert(id, ctx);
        self.settle(shard, id);
    }

    /// Validation and routing of a new request (§16.3, §16.4, §16.5).
    pub(super) fn decide(
        &self,
        now: Instant,
        src: &Source,
        msg: &Message,
    ) -> Result<Decision, Reject> {
        let method = msg.method().unwrap_or(Method::Other);
        let uri = msg.uri().map_err(|e| reject(400, e.reason()))?;
        if let Scheme::Other(s) = uri.scheme {
            let _ = s;
            return Err(reject(416, "Unsupported URI Scheme"));
        }
        let mf = msg.max_forwards().map_err(|e| reject(400, e.reason()))?;
        let to_tag = msg.to_tag().is_some();
        if mf == Some(0) {
            if method == Method::Options && self.is_us(&uri) && uri.user.is_none() && !to_tag {
                return Ok(Decision::LocalOk);
            }
            return Err(reject(483, "Too Many Hops"));
        }
        if let Some(pr) = msg.get(HeaderName::ProxyRequire) {
            let mut r = reject(420, "Bad Extension");
            r.extra.push(format!("Unsupported: {pr}"));
            return Err(r);
        }
        let loop_hash = self.loop_hash(msg);
        for via in msg.vias().flatten() {
            if self.is_us_host(via.host, via.port)
                && via
                    .branch()
                    .and_then(parse_branch)
                    .is_some_and(|(l, _, _, _)| l == loop_hash)
            {
                return Err(reject(482, "Loop Detected"));
            }
        }
        // Route: pop the values that name us (two of them after a double Record-Route)
        let routes: Vec<&str> = msg.values(HeaderName::Route).collect();
        let mut popped = 0;
        let mut last_popped: Option<NameAddr> = None;
        // an in-dialog request must follow a Route we signed for its dialog (or a dialog we
        // track): anything else would let anyone relay through us to any address
        let (from_tag, to_tag_s) = (msg.from_tag().unwrap_or(""), msg.to_tag().unwrap_or(""));
        // signed: a Route of ours carries a valid signature and none a wrong one (ours without
        // any, as an outbound proxy's Route, may come along)
        let (mut signed, mut tampered) = (false, false);
        // the topmost Routes may name another node of the cluster: the request reached us
        // instead (a VIP moved, DNS SRV chose us) and we stand in for it; after a Route of
        // our own, another node's is the next hop (a call handed to the node that holds the
        // user's connection)
        let mut own_popped = false;
        // the node the route set names first, when that is another node (we stand in)
        let mut first_peer: Option<(SocketAddr, Uri<'_>)> = None;
        while popped < routes.len() {
            let na =
                NameAddr::parse(routes[popped], "Route").map_err(|e| reject(400, e.reason()))?;
            let own = self.is_self(&na.uri);
            if !own && (own_popped || !self.is_us(&na.uri)) {
                break;
            }
            if popped == 0 && !own {
                first_peer = host_ip(na.uri.host)
                    .map(|ip| (SocketAddr::new(ip, na.uri.port.unwrap_or(5060)), na.uri));
            }
            own_popped |= own;
            if to_tag && na.uri.params.has("sg") {
                match self.rr_signed(&na.uri, msg.call_id(), from_tag, to_tag_s) {
                    true => signed = true,
                    false => tampered = true,
                }
            }
            last_popped = Some(na);
            popped += 1;
        }
        // strict-router fix-up (§16.4): our Record-Route URI arrived as Request-URI
        let mut new_ruri = None;
        let mut drop_last = false;
        if routes.len() > popped && self.is_us(&uri) && uri.is_loose() {
            let last = NameAddr::parse(routes[routes.len() - 1], "Route")
                .map_err(|e| reject(400, e.reason()))?;
            new_ruri = Some(last.uri.raw.to_string());
            drop_last = true;
            if to_tag && uri.params.has("sg") {
                match self.rr_signed(&uri, msg.call_id(), from_tag, to_tag_s) {
                    true => signed = true,
                    false => tampered = true,
                }
            }
        }
        let signed = signed && !tampered;
        let remaining = routes.len() - popped - drop_last as usize;
        let plan_base = |record_route: bool| -> Result<Plan, Reject> {
            Ok(Plan {
                route_edits: route_edits(msg, popped, drop_last.then(|| routes.len() - 1)),
                new_ruri: new_ruri.clone(),
                record_route,
                in_transport: src.transport,
                in_flow: src.flow,
                via_fix: via_fix(msg, src),
                max_forwards: msg.position(HeaderName::MaxForwards).zip(mf),
                loop_hash,
                ruri_from_dest: false,
                parallel: false,
                extra_top: Vec::new(),
                request_target: false,
            })
        };
        if to_tag {
            if popped == 0 && new_ruri.is_none() {
                return Err(reject(404, "Not Here (no route to follow)"));
            }
            if !signed
                && !self
                    .dialogs
                    .as_ref()
                    .is_some_and(|d| d.knows(msg.call_id(), from_tag, to_tag_s))
            {
                Stats::inc(&self.stats.forged_routes);
                if let Some(skipped) = self.log_limit.allow(now, Kind::ForgedRoute) {
                    tracing::warn!(source = %src.addr, method = msg.method_str(), call_id = msg.call_id(), skipped, "in-dialog request without a Route the proxy signed: refused");
                }
                return Err(reject(403, "Forbidden"));
            }
            if let Some(d) = &self.dialogs {
                // INVITE-dialog requests must belong to a dialog we know (event dialogs of
                // SUBSCRIBE/NOTIFY are not tracked and pass)
                if matches!(
                    method,
                    Method::Bye
                        | Method::Invite
                        | Method::Update
                        | Method::Prack
                        | Method::Info
                        | Method::Refer
                ) {
                    let refresh = matches!(method, Method::Invite | Method::Update).then(|| {
                        msg.get(HeaderName::SessionExpires)
                            .and_then(crate::dialog::parse_session_expires)
                    });
                    let seq = msg.cseq().map(|c| c.seq).unwrap_or(0);
                    let known = d.on_request(
                        now,
                        msg.call_id(),
                        msg.from_tag().unwrap_or(""),
                        msg.to_tag().unwrap_or(""),
                        seq,
                        refresh,
                    );
                    match (&first_peer, &self.peers) {
                        _ if known => {}
                        (Some((peer, uri)), Some(peers))
                            if signed && peers.takes_handoff(*peer) =>
                        {
                            // set up through a live node whose dialog has not reached us yet
                            // (shared within a fraction of a second): the request is that
                            // node's to handle, its Route left on top
                            Stats::inc(&self.stats.cluster_handed);
                            let dest = self.next_hop(uri, None)?;
                            let mut plan = plan_base(false)?;
                            plan.route_edits = route_edits(msg, 0, None);
                            plan.new_ruri = None;
                            plan.request_target = true;
                            return Ok(Decision::Forward {
                                plan,
                                candidates: vec![dest],
                            });
                        }
                        (Some(_), Some(_)) if signed => {
                            // a dead (or gone quiet) node's call too young to have been
                            // shared: its route is signed with the cluster's key, so it is
                            // followed without a dialog
                            Stats::inc(&self.stats.cluster_stand_ins);
                        }
                        _ => {
                            Stats::inc(&self.stats.dialogs_refused);
                            return Err(reject(
                                481,
                                "Call/Transaction Does Not Exist (no such dialog)",
                            ));
                        }
                    }
                }
            }
            let next = if remaining > 0 {
                NameAddr::parse(routes[popped], "Route")
                    .map_err(|e| reject(400, e.reason()))?
                    .uri
            } else {
                Uri::parse(new_ruri.as_deref().unwrap_or(msg.uri_str()))
                    .map_err(|e| reject(400, e.reason()))?
            };
            // the flow token of our own Record-Route picks the connection back to the peer
            let dest = self.next_hop(&next, last_popped.as_ref().map(|n| &n.uri))?;
            let mut plan = plan_base(false)?;
            plan.request_target = true;
            return Ok(Decision::Forward {
                plan,
                candidates: vec![dest],
            });
        }
        if remaining > 0 {
            return Err(reject(403, "Forbidden (preloaded Route to another host)"));
        }
        // a Request-URI in a domain the registrar serves is ours, whatever Route brought it:
        // the location service decides (FreeSWITCH's outbound-proxy form)
        let served = self.registrar.as_ref().is_some_and(|r| {
            r.config().mode == RegistrarMode::Local
                && !r.config().domains.is_empty()
                && r.is_local_domain(uri.host)
        });
        if popped > 0 && new_ruri.is_none() && !self.is_us(&uri) && !served && self.is_trusted(src)
        {
            // a media server follows a Path (or an outbound proxy Route) to a user: the
            // Request-URI is the target, the popped Route's flow token the connection
            let dest = self.next_hop(&uri, last_popped.as_ref().map(|n| &n.uri))?;
            let mut plan = plan_base(matches!(
                method,
                Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
            ))?;
            plan.request_target = true;
            return Ok(Decision::Forward {
                plan,
                candidates: vec![dest],
            });
        }
        if method == Method::Options && self.is_us(&uri) && uri.user.is_none() {
            return Ok(Decision::LocalOk);
        }
        if method == Method::Register {
            if let Some(reg) = self
                .registrar
                .as_ref()
                .filter(|r| r.config().mode == RegistrarMode::Forward)
            {
                return self.forward_register(reg, src, msg, plan_base(false)?);
            }
        }
        // users authenticate before anything else is decided for their call
        let mut strip = Vec::new();
        if let Some(reg) = &self.registrar {
            strip = self.authorize(now, reg, src, msg)?;
        }
        // number routing: aliases, dialplan, carriers by prefix
        let mut new_ruri: Option<String> = None;
        let mut force_location = false;
        if let Some(nr) = self.numbers.as_ref().filter(|_| method == Method::Invite) {
            let sender = if self.is_media_server(src.addr) {
                Sender::MediaServers
            } else if nr.is_gateway(src.addr.ip()) {
                Sender::Carriers
            } else {
                Sender::Users
            };
            let rand = crate::dns::splitmix(self.cfg.salt ^ loop_hash as u64);
            let from = msg.from().ok();
            let caller = from
                .as_ref()
                .map_or(("", ""), |f| (f.uri.user.unwrap_or(""), f.uri.host));
            match nr.decide(sender, caller, uri.user.unwrap_or(""), uri.host, rand) {
                NumberDecision::Reject(code, reason) => return Err(reject(code, reason)),
                NumberDecision::Gateways(candidates) => {
                    let mut plan = plan_base(true)?;
                    plan.route_edits
                        .extend(strip.into_iter().map(|i| (i, None)));
                    plan.ruri_from_dest = true;
                    return Ok(Decision::Forward { plan, candidates });
                }
                NumberDecision::Continue {
                    user,
                    domain,
                    location,
                } => {
                    force_location = location;
                    if user.is_some() || domain.is_some() {
                        new_ruri = Some(rewrite_uri(&uri, user.as_deref(), domain.as_deref())?);
                    }
                }
            }
        }
        let routed_uri = match &new_ruri {
            Some(r) => Uri::parse(r).map_err(|e| reject(500, e.reason()))?,
            None => uri,
        };
        if let Some(reg) = &self.registrar {
            match self.decide_user(now, reg, src, &routed_uri, force_location)? {
                UserRoute::Location {
                    candidates,
                    parallel,
                } => {
                    let mut plan = plan_base(matches!(
                        method,
                        Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
                    ))?;
                    plan.route_edits
                        .extend(strip.into_iter().map(|i| (i, None)));
                    plan.ruri_from_dest = true;
                    plan.parallel = parallel;
                    return Ok(Decision::Forward { plan, candidates });
                }
                UserRoute::Dispatch => {}
            }
        } else if force_location {
            return Err(reject(
                404,
                "Not Found (no registrar for the location service)",
            ));
        }
        let mut candidates = Vec::with_capacity(4);
        self.router.select_from(msg, src.addr, &mut candidates);
        if candidates.is_empty() {
            let mut r = reject(
                503,
                format!(
                    "Service Unavailable (no destination available in {})",
                    self.router.describe_from(msg, src.addr)
                ),
            );
            r.extra.push("Retry-After: 5".into());
            return Err(r);
        }
        let rr = matches!(
            method,
            Method::Invite | Method::Subscribe | Method::Refer | Method::Notify
        );
        let mut plan = plan_base(rr)?;
        plan.route_edits
            .extend(strip.into_iter().map(|i| (i, None)));
        if new_ruri.is_some() {
            plan.new_ruri = new_ruri;
        }
        Ok(Decision::Forward { plan, candidates })
    }

    /// Media servers, trusted and allowed networks are never limited or banned.
    pub(super) fn pike_exempt(&self, p: &Pike, src: &Source) -> bool {
        let ip = src.addr.ip();
        p.is_allowed(ip)
            || self.router.is_destination_ip(ip)
            || self.registrar.as_ref().is_some_and(|r| r.is_trusted_ip(ip))
    }

    /// Scanners are banned at once; every other request is counted against its source's
    /// budget. False: drop the request.
    fn pike_pass(&self, now: Instant, p: &Pike, src: &Source, msg: &Message) -> bool {
        use crate::pike::{BanReason, Class, Verdict};
        if msg
            .get_named("User-Agent")
            .is_some_and(|ua| p.is_scanner(ua))
        {
            Stats::inc(&self.stats.scanners_banned);
            p.ban(now, src.addr.ip(), BanReason::Scanner);
            return false;
        }
        let class = match msg.method() {
            Some(Method::Register) => Class::Register,
            Some(Method::Invite) => Class::Invite,
            Some(Method::Options) => Class::Options,
            _ => Class::Other,
        };
        let auth_on = self.registrar.as_ref().is_some_and(|r| r.config().auth);
        match p.check(now, src.addr.ip(), class, auth_on) {
            Verdict::Pass => true,
            Verdict::Drop | Verdict::Banned => {
                Stats::inc(&self.stats.rate_limited);
                false
            }
        }
    }

    /// True when `addr` is a media server's (a dispatcher destination or balancer node): by
    /// IP address alone, or address and port (`media_servers_by_address` off).
    pub(super) fn is_media_server(&self, addr: SocketAddr) -> bool {
        let by_port = self.cfg.loopback_by_port && addr.ip().is_loopback();
        if self.cfg.media_servers_by_address && !by_port {
            self.router.is_destination_ip(addr.ip())
        } else {
            self.router.is_destination(addr)
        }
    }

    /// True when `src` is a media server (a dispatcher destination) or in a trusted network.
    pub(super) fn is_trusted(&self, src: &Source) -> bool {
        self.is_media_server(src.addr)
            || self.peers.as_ref().is_some_and(|p| p.contains(src.addr))
            || self
                .registrar
                .as_ref()
                .is_some_and(|r| r.is_trusted_ip(src.addr.ip()))
    }

    /// Forward mode (seeds 001 and 003): the REGISTER goes to a media server chosen by a
    /// hash of the AOR, with our Path (carrying the client's connection as a flow token) so
    /// the media server stores the proxy as the way to the user, and with Contacts that
    /// name the client's public address instead of a private, `.invalid` or WebSocket one.
    fn forward_register(
        &self,
        reg: &Registrar,
        src: &Source,
        msg: &Message,
        mut plan: Plan,
    ) -> Result<Decision, Reject> {
        let to = msg.to().map_err(|e| reject(400, e.reason()))?;
        if !reg.is_local_domain(to.uri.host) && !self.is_us(&to.uri) {
            return Err(reject(
                403,
                format!("Forbidden (domain {} is not served here)", to.uri.host),
            ));
        }
        let aor = format!(
            "{}@{}",
            to.uri.user.unwrap_or(""),
            to.uri.host.to_ascii_lowercase()
        );
        let mut candidates = Vec::with_capacity(4);
        self.router.select_by_key(&aor, msg, &mut candidates);
        let Some(first) = candidates.first() else {
            let mut r = reject(
                503,
                format!(
                    "Service Unavailable (no destination available in {})",
                    self.router.describe()
                ),
            );
            r.extra.push("Retry-After: 5".into());
            return Err(r);
        };
        let facing = self
            .listener(first.transport)
            .ok_or_else(|| reject(503, "Service Unavailable (no listener for transport)"))?;
        let token = src
            .flow
            .map(|f| format!("{}@", self.flow_token(f)))
            .unwrap_or_default();
        let tp = src
            .transport
            .uri_param()
            .map(|t| format!(";sbt={t}"))
            .unwrap_or_default();
        plan.extra_top
            .push(format!("Path: <sip:{token}{facing};lr{tp}>"));
        if !msg
            .values(HeaderName::Supported)
            .any(|s| s.eq_ignore_ascii_case("path"))
        {
            plan.extra_top.push("Supported: path".into());
        }
        for (i, h) in msg.headers().iter().enumerate() {
            if h.name != HeaderName::Contact {
                continue;
            }
            let mut vals = Vec::new();
            for v in split_commas(msg.value(h)) {
                vals.push(public_contact(v, src).map_err(|e| reject(400, e))?);
            }
            plan.route_edits
                .push((i, Some(format!("Contact: {}", vals.join(", ")))));
        }
        Ok(Decision::Forward { plan, candidates })
    }

    /// Registrar routing of an initial request: authenticate local users (`407`), and send
    /// calls to local users (from a media server, or between users when direct) to their
    /// registered contacts.
    /// Authenticates an initial request (`407` with a challenge, or a refusal) unless its
    /// source is trusted; gives the header indexes of the credentials it consumed (the
    /// media server must not see them).
    fn authorize(
        &self,
        now: Instant,
        reg: &Registrar,
        src: &Source,
        msg: &Message,
    ) -> Result<Vec<usize>, Reject> {
        let trusted = self.is_media_server(src.addr);
        let mut strip = Vec::new();
        match reg.authorize_call(now, src, msg, trusted) {
            CallAuth::Refuse(r) => return Err(r.into()),
            CallAuth::User(_) => {
                if let Some(p) = &self.pike {
                    p.authenticated(now, src.addr.ip());
                }
                for (i, h) in msg.headers().iter().enumerate() {
                    if h.name == HeaderName::ProxyAuthorization {
                        strip.push(i);
                    }
                }
            }
            CallAuth::Trusted => {}
        }
        Ok(strip)
    }

    /// To the location service, or on to the media servers. `location`: the number
    /// routing said this is a local user (an unregistered one is then refused, not sent to
    /// the media servers).
    fn decide_user(
        &self,
        now: Instant,
        reg: &Registrar,
        src: &Source,
        uri: &Uri,
        location: bool,
    ) -> Result<UserRoute, Reject> {
        let trusted = self.is_media_server(src.addr) || reg.is_trusted_ip(src.addr.ip());
        let Some(user) = uri.user.filter(|u| !u.is_empty()) else {
            return Ok(UserRoute::Dispatch);
        };
        let cfg = reg.config();
        let domain = if self.is_us(uri) && !cfg.domains.is_empty() {
            cfg.domains[0].clone()
        } else if reg.is_local_domain(uri.host) {
            uri.host.to_ascii_lowercase()
        } else {
            return Ok(UserRoute::Dispatch);
        };
        // from outside, a user without a binding and a name that does not exist are alike:
        // both go to the media servers (their answer, not ours, says what happens)
        if !(location
            || trusted
            || (cfg.direct_user_calls && reg.is_registered(user, &domain, now)))
        {
            return Ok(UserRoute::Dispatch);
        }
        let candidates = reg.lookup(user, &domain, now).map_err(Reject::from)?;
        Ok(UserRoute::Location {
            candidates,
            parallel: cfg.fork == Fork::Parallel,
        })
    }

    /// The next hop of a URI: its address with the transport from the URI, or from the
    /// last Route we popped (the leg it faces), and that Route's flow token; a host name is
    /// left for [`Proxy::start_branch`] to resolve (RFC 3263).
    pub(super) fn next_hop(&self, uri: &Uri, popped: Option<&Uri>) -> Result<Destination, Reject> {
        let explicit = match uri.transport() {
            Some(t) => Some(Transport::parse(t).ok_or_else(|| {
                reject(503, format!("Service Unavailable (unknown transport {t})"))
            })?),
            None => None,
        };
        let Some(ip) = host_ip(uri.host) else {
            // our Route with a flow token names the connection: the host is not looked up
            // (a WebSocket user's Contact is `.invalid`, RFC 7118 §5.2)
            if let Some(flow) = popped
                .and_then(|p| p.user)
                .and_then(|u| self.flow_of_token(u))
            {
                let transport = popped
                    .and_then(|p| p.params.value("sbt").or(p.transport()))
                    .and_then(Transport::parse)
                    .or(explicit)
                    .unwrap_or(Transport::Tcp);
                return Ok(Destination {
                    uri: uri.raw.into(),
                    transport,
                    addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                    flow: Some(flow),
                    node: None,
                    route: None,
                    name: None,
                });
            }
            let secure = uri.scheme == Scheme::Sips;
            let q =
                crate::dns::Query::new(uri.host, uri.port, explicit, secure).ok_or_else(|| {
                    reject(
                        400,
                        format!("Bad Request (not a valid host name: {})", uri.host),
                    )
                })?;
            return Ok(Destination {
                uri: uri.raw.into(),
                transport: explicit.unwrap_or(Transport::Udp),
                addr: SocketAddr::from(([0, 0, 0, 0], 0)),
                flow: None,
                node: None,
                route: None,
                name: Some(Arc::new(q)),
            });
        };
        let t = self.resolve(uri, ip, popped)?;
        Ok(Destination {
            uri: uri.raw.into(),
            transport: t.transport,
            addr: t.addr,
            flow: t.flow,
            node: None,
            route: None,
            name: None,
        })
    }

    /// The next hop of a URI whose host is the IP literal `ip`.
    pub(super) fn resolve(
        &self,
        uri: &Uri,
        ip: std::net::IpAddr,
        popped: Option<&Uri>,
    ) -> Result<Target, Reject> {
        let transport = match uri.transport() {
            Some(t) => Transport::parse(t).ok_or_else(|| {
                reject(503, format!("Service Unavailable (unknown transport {t})"))
            })?,
            None if uri.scheme == Scheme::Sips => Transport::Tls,
            None => popped
                .and_then(|p| p.params.value("sbt").or(p.transport()))
                .and_then(Transport::parse)
                .unwrap_or(Transport::Udp),
        };
        let port = uri.port.unwrap_or(if transport == Transport::Tls {
            5061
        } else {
            5060
        });
        // a flow token counts only with its MAC: a guessed one routes by address instead
        let flow = popped
            .and_then(|p| p.user)
            .and_then(|u| self.flow_of_token(u));
        Ok(Target {
            transport,
            addr: SocketAddr::new(ip, port),
            flow,
        })
    }

    pub(super) fn loop_hash(&self, msg: &Message) -> u32 {
        let from_tag = msg.from_tag().unwrap_or("");
        let to_tag = msg.to_tag().unwrap_or("");
        let seq = msg.cseq().map(|c| c.seq).unwrap_or(0);
        let route = msg.get(HeaderName::Route).unwrap_or("");
        hash64(
            self.cfg.salt,
            &(msg.uri_str(), from_tag, to_tag, msg.call_id(), seq, route),
        ) as u32
    }

    /// Creates the next branch from the remaining candidates (expanding a name first). False
    /// when none is left; true as well when the context now waits for a name's lookup.
    pub(super) fn start_branch(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        out: &mut Vec<Transmit>,
    ) -> bool {
        if ctx.wait.is_some() {
            return true; // a branch waits for its name or its media offer
        }
        while ctx.next_candidate < ctx.candidates.len() {
            ctx.next_candidate += 1;
            if let Some(q) = ctx.candidates[ctx.next_candidate - 1].name.clone() {
                match self.expand_name(now, ctx, &q) {
                    wait::Expanded::Done => continue,
                    wait::Expanded::Waiting => return true,
                }
            }
            let at = ctx.next_candidate - 1;
            let dest = ctx.candidates[at].clone();
            let (body, media) = match self.branch_media(now, ctx, at, &dest) {
                media::BranchStep::Plain => (None, None),
                media::BranchStep::Relayed(body, m) => (body, Some(m)),
                media::BranchStep::Wait => {
                    ctx.next_candidate = at;
                    return true;
                }
                media::BranchStep::Refuse => {
                    ctx.next_candidate = ctx.candidates.len();
                    return false;
                }
            };
            let idx = ctx.branches.len() as u32;
            let branch = self.branch_for(ctx.plan.loop_hash, ctx.id, idx);
            let Some(data) = ctx.req.as_ref().and_then(|req| {
                self.build_forward(
                    req,
                    &ctx.plan,
                    dest.transport,
                    &branch,
                    Some(&dest),
                    body.as_deref(),
                )
            }) else {
                tracing::warn!(destination = %dest.uri, transport = %dest.transport, "no listener for the destination's transport");
                ctx.fallback = (
                    503,
                    "Service Unavailable (no listener for transport)".into(),
                );
                continue;
            };
            let target = Target {
                transport: dest.transport,
                addr: dest.addr,
                flow: dest.flow,
            };
            let reliable = dest.transport.is_reliable();
            let txn = if ctx.invite {
                ClientTxn::Invite(ClientInvite::new(
                    now,
                    data.clone(),
                    reliable,
                    self.cfg.timers,
                ))
            } else {
                ClientTxn::NonInvite(ClientNonInvite::new(
                    now,
                    data.clone(),
                    reliable,
                    self.cfg.timers,
                ))
            };
            let final_deadline = ctx.invite.then(|| now + self.cfg.timers.t1 * 360);
            ctx.branches.push(Branch {
                target,
                dest,
                txn,
                request: data,
                provisional: false,
                done: false,
                cancel_pending: false,
                cancel: None,
                bye: None,
                silence_deadline: ctx.fast_failover.then(|| now + self.cfg.branch_timeout),
                final_deadline,
                abandon_at: None,
                media,
            });
            Stats::inc(&self.stats.fwd_requests);
            if ctx.invite && ctx.fast_failover && !ctx.plan.ruri_from_dest {
                let call_id = ctx.call_id().to_string();
                self.router
                    .on_attempt(&call_id, &ctx.branches[idx as usize].dest);
            }
            self.flush_branch(ctx, idx as usize, out);
            return true;
        }
        false
    }

    /// The branch's copy of the request (§16.6): our Via on top, Record-Route, Route values
    /// naming us removed, Max-Forwards decremented, received/rport on the sender's Via.
    pub(super) fn build_forward(
        &self,
        req: &Message,
        plan: &Plan,
        out_t: Transport,
        branch: &str,
        dest: Option<&Destination>,
        body: Option<&[u8]>,
    ) -> Option<Bytes> {
        let ours = self.listener(out_t)?;
        let mut e = Editor::new(req);
        if let Some(b) = body {
            e.set_body(b);
        }
        if let Some(r) = &plan.new_ruri {
            e.start_line(format_args!("{} {} SIP/2.0", req.method_str(), r));
        }
        for line in &plan.extra_top {
            e.push_top(format_args!("{line}"));
        }
        if let Some(d) = dest.filter(|_| plan.ruri_from_dest) {
            e.start_line(format_args!("{} {} SIP/2.0", req.method_str(), d.uri));
            if let Some(route) = &d.route {
                e.push_top(format_args!("Route: {route}"));
            }
        }
        e.push_top(format_args!(
            "Via: SIP/2.0/{} {};branch={}",
            out_t.via_name(),
            ours,
            branch
        ));
        if plan.record_route {
            let tp = |t: Transport| {
                t.uri_param()
                    .map(|p| format!(";transport={p}"))
                    .unwrap_or_default()
            };
            // each of our Record-Route URIs is signed for the dialog (Call-ID, the caller's
            // tag, its user part), so only its parties can route along it
            let (call_id, tag) = (req.call_id(), req.from_tag().unwrap_or(""));
            if out_t != plan.in_transport || plan.in_transport.is_reliable() {
                // RFC 5658 double Record-Route; each carries the flow token of the connection
                // on its side, so an in-dialog request (whose last Route of ours is the one
                // facing its destination) goes back over the peer's own connection, whatever
                // its Contact says (a WebSocket user's is an unreachable `.invalid` host)
                let inbound = self.listener(plan.in_transport).unwrap_or(ours);
                let token = |f: Option<FlowId>| f.map(|f| self.flow_token(f)).unwrap_or_default();
                let at = |t: &str| if t.is_empty() { "" } else { "@" };
                let (in_token, out_token) = (token(plan.in_flow), token(dest.and_then(|d| d.flow)));
                e.push_top(format_args!(
                    "Record-Route: <sip:{out_token}{}{}{};lr;sg={:016x}>",
                    at(&out_token),
                    ours,
                    tp(out_t),
                    self.rr_signature(call_id, tag, &out_token)
                ));
                e.push_top(format_args!(
                    "Record-Route: <sip:{in_token}{}{}{};lr;sg={:016x}>",
                    at(&in_token),
                    inbound,
                    tp(plan.in_transport),
                    self.rr_signature(call_id, tag, &in_token)
                ));
            } else {
                e.push_top(format_args!(
                    "Record-Route: <sip:{};lr;sg={:016x}>",
                    ours,
                    self.rr_signature(call_id, tag, "")
                ));
            }
        }
        if let Some((idx, line)) = &plan.via_fix {
            e.replace(*idx, format_args!("{line}"));
        }
        for (idx, rep) in &plan.route_edits {
            match rep {
                None => e.remove(*idx),
                Some(l) => e.replace(*idx, format_args!("{l}")),
            };
        }
        match plan.max_forwards {
            Some((idx, v)) => e.replace(idx, format_args!("Max-Forwards: {}", v.saturating_sub(1))),
            None => e.append(format_args!("Max-Forwards: {}", self.cfg.max_forwards)),
        };
        Some(Bytes::from(e.finish()))
    }

    pub(super) fn on_ack(
        &self,
        now: Instant,
        src: Source,
        msg: Message,
        key: String,
        out: &mut Vec<Transmit>,
    ) {
        {
            let si = self.shard_of_key(&key);
            let mut g = self.lock(si);
            if let Some(&id) = g.by_key.get(&key) {
                if let Some(ctx) = g.ctxs.get_mut(&id) {
                    if let ServerTxn::Invite(s) = &mut ctx.server {
                        if s.on_ack(now) == RequestAction::Absorbed {
                            return;
                        }
                    }
                }
            }
        }
        let to_tag = msg.to_tag().map(str::to_string);
        if to_tag.as_deref().is_none_or(|t| t.starts_with(TAG_PREFIX)) {
            return; // ACK for a reply we generated, or a stray ACK with no dialog
        }
        // ACK for a 2xx: stateless, along the route set (§16.11)
        let Ok(Decision::Forward { plan, candidates }) = self.decide(now, &src, &msg) else {
            Stats::inc(&self.stats.dropped);
            return;
        };
        let Some(dest) = candidates.first() else {
            return;
        };
        let in_branch = msg.branch().unwrap_or("");
        let branch = format!("{STATELESS_PREFIX}{:x}", hash64(self.cfg.salt, in_branch));
        let Some(target) = self.cached_target(now, dest) else {
            Stats::inc(&self.stats.dropped);
            return;
        };
        if let Some(data) = self.build_forward(&msg, &plan, target.transport, &branch, None, None) {
            Stats::inc(&self.stats.stateless_acks);
            let t = Transmit {
                target,
                data,
                origin: None,
                tls_name: None,
            };
            self.media_ack(now, &src, &msg, t, out);
        }
    }

    pub(super) fn on_cancel(
        &self,
        now: Instant,
        src: Source,
        msg: Message,
        out: &mut Vec<Transmit>,
    ) {
        let Ok(inv_key) = server_key_for(&msg, "INVITE") else {
            return;
        };
        let si = self.shard_of_key(&inv_key);
        let mut g = self.lock(si);
        let shard = &mut *g;
        let Some(&id) = shard.by_key.get(&inv_key) else {
            drop(g);
            return self.reply_stateless(
                &src,
                &msg,
                reject(481, "Call/Transaction Does Not Exist"),
                out,
            );
        };
        let Some(ctx) = shard.ctxs.get_mut(&id) else {
            return;
        };
        // §16.10: answer the CANCEL at once, then cancel the pending branches
        Stats::inc(&self.stats.local_replies);
        let tag = self.local_tag(msg.call_id());
        out.push(Transmit {
            target: src.reply_target(),
            data: local_response(&msg, 200, "OK", &tag, &[], &self.cfg.server),
            origin: None,
            tls_name: None,
        });
        if !ctx.final_sent && !ctx.cancelled {
            ctx.cancelled = true;
            for i in 0..ctx.branches.len() {
                self.cancel_branch(now, ctx, i, out);
            }
            if ctx.wait.take().is_some() {
                // parked on a lookup or a media offer: nothing went out for it, so 487
                // once the branches are done
                if let Some(m) = ctx.media.as_mut() {
                    m.offering = None;
                    m.parked = None;
                }
                self.finalize(now, ctx, out);
            }
        }
        self.settle(shard, id);
    }

    pub(super) fn cancel_branch(
        &self,
        now: Instant,
        ctx: &mut Ctx,
        i: usize,
        out: &mut Vec<Transmit>,
    ) {
        let b = &mut ctx.branches[i];
        if b.done || b.cancel.is_some() || !ctx.invite {
            return;
        }
        if !b.provisional {
            b.cancel_pending = true; // §9.1: wait for a provisional before sending CANCEL
            return;
        }
        let Ok(inv) = Message::parse_raw(b.request.clone()) else {
            return;
        };
        let cancel = make_cancel(&inv, &self.cfg.server);
        b.cancel = Some(ClientNonInvite::new(
            now,
            cancel,
            b.target.transport.is_reliable(),
            self.cfg.timers,
        ));
        b.cancel_pending = false;
        b.abandon_at = Some(now + self.cfg.timers.t1 * 64);
        self.flush_branch(ctx, i, out);
    }
}

/// True when the Via entries (header lines and comma-separated values, counted without
/// parsing them) are more than `max`.
fn too_many_vias(msg: &Message, max: usize) -> bool {
    let mut n = 0;
    for h in msg.headers() {
        if h.name == HeaderName::Via {
            n += 1 + msg.value(h).bytes().filter(|&b| b == b',').count();
            if n > max {
                return true;
            }
        }
    }
    false
}

/// The replacement for the first Via line when the sender's Via needs `received`/`rport`.
pub(super) fn via_fix(msg: &Message, src: &Source) -> Option<(usize, String)> {
    let idx = msg.position(HeaderName::Via)?;
    let h = msg.headers()[idx];
    let mut values = split_commas(msg.value(&h));
    let top = values.next()?;
    let via = Via::parse(top).ok()?;
    let rport_wanted = via.rport() == Some(None);
    let received_needed = host_ip(via.host) != Some(src.addr.ip());
    if !rport_wanted && !received_needed {
        return None;
    }
    let mut s = format!("Via: SIP/2.0/{} {}", via.transport, via.sent_by);
    for (n, v) in via.params.iter() {
        if n.eq_ignore_ascii_case("received") {
            continue;
        }
        if n.eq_ignore_ascii_case("rport") {
            s.push_str(";rport=");
            sip_wire::addr::push_u16(&mut s, src.addr.port());
            continue;
        }
        s.push(';');
        s.push_str(n);
        if let Some(v) = v {
            s.push('=');
            s.push_str(v);
        }
    }
    s.push_str(";received=");
    sip_wire::addr::push_ip(&mut s, src.addr.ip());
    for rest in values {
        s.push_str(", ");
        s.push_str(rest);
    }
    Some((idx, s))
}

/// Header edits that drop the first `popped` Route values and, for the strict-router
/// fix-up, the value at index `drop`.
fn route_edits(msg: &Message, popped: usize, drop: Option<usize>) -> Vec<(usize, Option<String>)> {
    let mut edits = Vec::new();
    if popped == 0 && drop.is_none() {
        return edits;
    }
    let mut n = 0;
    for (idx, h) in msg.headers().iter().enumerate() {
        if h.name != HeaderName::Route {
            continue;
        }
        let vals: Vec<&str> = split_commas(msg.value(h)).collect();
        let keep: Vec<&str> = vals
            .iter()
            .enumerate()
            .filter(|(j, _)| !(n + j < popped || drop == Some(n + j)))
            .map(|(_, v)| *v)
            .collect();
        n += vals.len();
        if keep.len() == vals.len() {
            continue;
        }
        edits.push((
            idx,
            if keep.is_empty() {
                None
            } else {
                Some(format!("Route: {}", keep.join(", ")))
            },
        ));
    }
    edits
}

/// A Contact value rewritten for a media server that must reach the client through us: the
/// host and port become the address the REGISTER came from when the Contact does not name it
/// (NAT, `.invalid`), and `transport=ws`/`wss` is dropped (seed 001). `*` passes unchanged.
pub(super) fn public_contact(v: &str, src: &Source) -> Result<String, String> {
    if v.trim() == "*" {
        return Ok(v.to_string());
    }
    let na = NameAddr::parse(v, "Contact").map_err(|e| format!("Bad Request (Contact: {e})"))?;
    let u = na.uri;
    if !matches!(u.scheme, Scheme::Sip | Scheme::Sips) || u.host.is_empty() {
        return Ok(v.to_string());
    }
    let ws = u
        .transport()
        .is_some_and(|t| t.eq_ignore_ascii_case("ws") || t.eq_ignore_ascii_case("wss"));
    let port = u.port.unwrap_or(5060);
    let names_source = host_ip(u.host) == Some(src.addr.ip()) && port == src.addr.port();
    if names_source && !ws {
        return Ok(v.to_string());
    }
    let scheme = if u.scheme == Scheme::Sips {
        "sips"
    } else {
        "sip"
    };
    let user = u.user.map(|x| format!("{x}@")).unwrap_or_default();
    let mut host = String::with_capacity(48);
    sip_wire::addr::push_socket_addr(&mut host, src.addr);
    let mut params = String::new();
    for (n, val) in u.params.iter() {
        if n.eq_ignore_ascii_case("transport") {
            continue;
        }
        params.push(';');
        params.push_str(n);
        if let Some(val) = val {
            params.push('=');
            params.push_str(val);
        }
    }
    if let Some(t) = src.transport.uri_param().filter(|_| !ws) {
        params.push_str(";transport=");
        params.push_str(t);
    }
    let display = na.display.map(|d| format!("{d} ")).unwrap_or_default();
    Ok(format!(
        "{display}<{scheme}:{user}{host}{params}>{}",
        na.params.as_str()
    ))
}

/// `uri` with its user part (and host) replaced: the Request-URI after an alias or a
/// dialplan translation. A user part that could break the URI is refused.
pub(super) fn rewrite_uri(
    uri: &Uri,
    user: Option<&str>,
    host: Option<&str>,
) -> Result<String, Reject> {
    if let Some(u) = user {
        if u.is_empty()
            || u.bytes()
                .any(|b| b <= b' ' || b >= 0x7f || b"@<>\"\\:".contains(&b))
        {
            return Err(reject(
                500,
                format!("Server Internal Error (number translated to an invalid user part {u:?})"),
            ));
        }
    }
    let raw = uri.raw;
    let offset = |part: &str| part.as_ptr() as usize - raw.as_ptr() as usize;
    let h0 = offset(uri.host);
    let (head, rest) = raw.split_at(h0);
    let rest = match host {
        Some(h) => format!("{h}{}", &rest[uri.host.len()..]),
        None => rest.to_string(),
    };
    let head = match (user, uri.user) {
        (Some(new), Some(old)) => {
            let u0 = offset(old);
            format!("{}{new}{}", &raw[..u0], &head[u0 + old.len()..])
        }
        (Some(new), None) => {
            let colon = head.find(':').map_or(0, |c| c + 1);
            format!("{}{new}@{}", &head[..colon], &head[colon..])
        }
        (None, _) => head.to_string(),
    };
    Ok(format!("{head}{rest}"))
}
