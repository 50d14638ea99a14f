//! `reported.changeSpec`: the recipe's shape with a report in place of each action.

use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

use super::{StepReport, StepStatus};
use crate::recipe::{ChangeSpec, Stage, action_path};

/// Step reports of one section, stage by stage.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ReportedSection {
    /// Reports of `preTransitConfig`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_transit_config: Vec<StepReport>,
    /// Reports of `transitPackage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub transit_package: Vec<StepReport>,
    /// Reports of `preInstallConfig`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pre_install_config: Vec<StepReport>,
    /// Reports of `installSteps`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub install_steps: Vec<StepReport>,
    /// Reports of `postInstallConfig`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub post_install_config: Vec<StepReport>,
}

impl ReportedSection {
    /// The reports of one stage.
    pub fn stage(&self, stage: Stage) -> &[StepReport] {
        match stage {
            Stage::PreTransitConfig => &self.pre_transit_config,
            Stage::TransitPackage => &self.transit_package,
            Stage::PreInstallConfig => &self.pre_install_config,
            Stage::InstallSteps => &self.install_steps,
            Stage::PostInstallConfig => &self.post_install_config,
        }
    }

    /// The reports of one stage, to change.
    pub fn stage_mut(&mut self, stage: Stage) -> &mut Vec<StepReport> {
        match stage {
            Stage::PreTransitConfig => &mut self.pre_transit_config,
            Stage::TransitPackage => &mut self.transit_package,
            Stage::PreInstallConfig => &mut self.pre_install_config,
            Stage::InstallSteps => &mut self.install_steps,
            Stage::PostInstallConfig => &mut self.post_install_config,
        }
    }
}

/// `reported.changeSpec`. Sections keep their order; unknown members are kept in `extra`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReportedChangeSpec {
    /// `id` of the recipe reported on.
    pub id: String,
    /// Sections (`patch`, `base`, ...) in order.
    pub sections: Vec<(String, ReportedSection)>,
    /// Path of the step running or last run (`changeSpec.patch.postInstallConfig[1]`).
    pub action_path: Option<String>,
    /// Status of the recipe as a whole (`Status`).
    pub status: Option<StepStatus>,
    /// Section of the last failed step.
    pub last_faulted_recipe: Option<String>,
    /// Path of the last failed step.
    pub last_faulted_path: Option<String>,
    /// Other members, as they came.
    pub extra: Map<String, Value>,
}

const ID: &str = "id";
const ACTION_PATH: &str = "actionPath";
const STATUS: &str = "Status";
const LAST_FAULTED_RECIPE: &str = "lastFaultedRecipe";
const LAST_FAULTED_PATH: &str = "lastFaultedPath";

impl ReportedChangeSpec {
    /// A report for `spec` with every step pending.
    pub fn pending_for(spec: &ChangeSpec) -> Self {
        let sections = spec
            .sections
            .iter()
            .map(|(name, section)| {
                let mut reported = ReportedSection::default();
                for (stage, actions) in section.stages() {
                    *reported.stage_mut(stage) = vec![StepReport::pending(); actions.len()];
                }
                (name.clone(), reported)
            })
            .collect();
        Self {
            id: spec.id.clone(),
            sections,
            status: Some(StepStatus::Pending),
            ..Self::default()
        }
    }

    /// The report of the step at `changeSpec.{section}.{stage}[{index}]`.
    pub fn step_mut(&mut self, path: &str) -> Option<&mut StepReport> {
        let (section, stage, index) = split_action_path(path)?;
        let (_, reported) = self.sections.iter_mut().find(|(name, _)| name == section)?;
        reported.stage_mut(stage).get_mut(index)
    }

    /// Every step report with its path, sections in order and stages in run order.
    pub fn steps(&self) -> impl Iterator<Item = (String, &StepReport)> {
        self.sections.iter().flat_map(|(name, section)| {
            Stage::ALL.into_iter().flat_map(move |stage| {
                let reports = section.stage(stage).iter().enumerate();
                reports.map(move |(index, report)| (action_path(name, stage, index), report))
            })
        })
    }
}

/// Splits `changeSpec.{section}.{stage}[{index}]`.
fn split_action_path(path: &str) -> Option<(&str, Stage, usize)> {
    let rest = path.strip_prefix("changeSpec.")?;
    let (head, index) = rest.strip_suffix(']')?.rsplit_once('[')?;
    let (section, stage_name) = head.rsplit_once('.')?;
    let stage = Stage::from_name(stage_name)?;
    Some((section, stage, index.parse().ok()?))
}

impl Serialize for ReportedChangeSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        map.serialize_entry(ID, &self.id)?;
        for (name, section) in &self.sections {
            map.serialize_entry(name, section)?;
        }
        let optional = [
            (ACTION_PATH, self.action_path.as_deref()),
            (LAST_FAULTED_RECIPE, self.last_faulted_recipe.as_deref()),
            (LAST_FAULTED_PATH, self.last_faulted_path.as_deref()),
        ];
        for (key, value) in optional {
            if let Some(value) = value {
                map.serialize_entry(key, value)?;
            }
        }
        if let Some(status) = &self.status {
            map.serialize_entry(STATUS, status)?;
        }
        for (key, value) in &self.extra {
            map.serialize_entry(key, value)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for ReportedChangeSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_map(ReportedVisitor)
    }
}

struct ReportedVisitor;

impl<'de> Visitor<'de> for ReportedVisitor {
    type Value = ReportedChangeSpec;

    fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("a reported changeSpec object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<ReportedChangeSpec, A::Error> {
        let mut report = ReportedChangeSpec::default();
        let mut id = None;
        while let Some(key) = map.next_key::<String>()? {
            match key.as_str() {
                ID => id = Some(map.next_value()?),
                ACTION_PATH => report.action_path = map.next_value()?,
                STATUS => report.status = map.next_value()?,
                LAST_FAULTED_RECIPE => report.last_faulted_recipe = map.next_value()?,
                LAST_FAULTED_PATH => report.last_faulted_path = map.next_value()?,
                _ => {
                    let value: Value = map.next_value()?;
                    if value.is_object() {
                        let section = ReportedSection::deserialize(&value).map_err(|error| {
                            de::Error::custom(format_args!("changeSpec.{key}: {error}"))
                        })?;
                        report.sections.push((key, section));
                    } else {
                        report.extra.insert(key, value);
                    }
                }
            }
        }
        report.id = id.ok_or_else(|| de::Error::missing_field(ID))?;
        Ok(report)
    }
}
