//! How a Kubernetes API call failed, typed once from its status.

/// How a Kubernetes API call failed, decided once from its status: the controller acts on
/// these (a refused watch is a `Forbidden` problem, a gone object is no error, a conflict is
/// retried) and never on error texts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiFailure {
    /// 403: RBAC or an admission policy refused it.
    Forbidden,
    /// 404: the object (or its namespace, or the resource type) does not exist.
    NotFound,
    /// 409: someone else wrote first, or it exists already.
    Conflict,
    /// Anything else: another status, or no answer from the API server at all.
    Other,
}

impl ApiFailure {
    pub fn of(error: &kube::Error) -> ApiFailure {
        match error {
            kube::Error::Api(status) => match status.code {
                403 => ApiFailure::Forbidden,
                404 => ApiFailure::NotFound,
                409 => ApiFailure::Conflict,
                _ => ApiFailure::Other,
            },
            _ => ApiFailure::Other,
        }
    }

    /// The failure under a watch error (the list or watch request itself, or an error event).
    pub fn of_watch(error: &kube::runtime::watcher::Error) -> ApiFailure {
        use kube::runtime::watcher::Error as Watch;
        match error {
            Watch::InitialListFailed(e) | Watch::WatchStartFailed(e) | Watch::WatchFailed(e) => {
                ApiFailure::of(e)
            }
            Watch::WatchError(status) => match status.code {
                403 => ApiFailure::Forbidden,
                404 => ApiFailure::NotFound,
                409 => ApiFailure::Conflict,
                _ => ApiFailure::Other,
            },
            _ => ApiFailure::Other,
        }
    }
}
