#include "model/loaded_model.h"

#include "backend/backend_factory.h"
#include "model/rank_group.h"

namespace kiln {

Result<LoadedModel> load_model(const std::string& dir) {
  LoadedModel m;
  KILN_ASSIGN_OR_RETURN(m.engine, load_engine(dir));
  if (!m.engine.layout.single()) {
    KILN_ASSIGN_OR_RETURN(std::unique_ptr<RankGroup> group, RankGroup::load(dir));
    m.runner = std::move(group);
    return m;
  }
  KILN_ASSIGN_OR_RETURN(m.backend, make_backend(m.engine.build.backend));
  KILN_ASSIGN_OR_RETURN(m.model, LlamaModel::load(m.engine, *m.backend));
  m.runner = std::make_unique<SingleRankRunner>(*m.model, *m.backend);
  return m;
}

}  // namespace kiln
